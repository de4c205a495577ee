"""Constant POSIX ``sh`` scripts that move files over a plain command channel.

Some servers disable the SFTP subsystem, so every file operation on a remote host is a
command: these scripts are fixed text, and the paths and numbers they need come in as
``"$1"``, ``"$2"``... (argv), never formatted into the script. File content travels on
stdin (writes) or stdout (reads), so neither side holds a whole file in memory.

The exit statuses below are part of the contract with :mod:`deployer.hosts.ssh`.
"""

from __future__ import annotations

import errno

# Exit statuses the scripts use to say why they refused (errno values where one fits).
MISSING = errno.ENOENT  # 2: the file (or the target's directory) does not exist
DENIED = errno.EACCES  # 13: the file is not readable
IS_DIRECTORY = errno.EISDIR  # 21: the path is a directory
INCOMPLETE = 75  # the content on stdin was shorter than announced: nothing was replaced

# Relative paths get a "./" so that no path can ever be read as an option ("-n").
_ANCHOR = 'case $1 in /*) ;; *) p=./$1; shift; set -- "$p" "$@" ;; esac\n'

READ_FILE = (
    _ANCHOR
    + 'if [ -d "$1" ]; then echo "$1 is a directory" >&2; exit 21; fi\n'
    + 'if [ ! -e "$1" ]; then echo "$1 does not exist" >&2; exit 2; fi\n'
    + 'if [ ! -r "$1" ]; then echo "$1 is not readable" >&2; exit 13; fi\n'
    + 'exec cat "$1"\n'
)
"""``sh -c READ_FILE sh PATH``: the file's bytes on stdout."""

WRITE_FILE = (
    _ANCHOR
    + r"""dir=${1%/*}
[ -n "$dir" ] || dir=/
base=${1##*/}
if [ -d "$1" ]; then echo "$1 is a directory" >&2; exit 21; fi
if [ ! -d "$dir" ]; then echo "directory $dir does not exist" >&2; exit 2; fi
tmp=$(mktemp "$dir/.$base.XXXXXXXXXX") || exit 1
trap 'rm -f "$tmp"' EXIT
trap 'exit 1' HUP INT TERM PIPE
if [ -n "$2" ]; then mode=$2
elif [ -e "$1" ]; then mode=$(stat -c %a "$1") || exit 1
else mode=$(printf %o $(( 0666 & ~$(umask) )))
fi
# The mode is set while the file is still empty and under its temporary name.
chmod "$mode" "$tmp" || exit 1
cat > "$tmp" || exit 1
# A dropped connection ends stdin early: a short file must never replace the old one.
size=$(( $(wc -c < "$tmp") ))
if [ "$size" -ne "$3" ]; then
    echo "received $size of $3 bytes; $1 was left unchanged" >&2
    exit 75
fi
# fsync the data, rename, then fsync the directory so the rename itself is durable
# (GNU and busybox sync take files; elsewhere a plain sync does the same, more slowly).
sync "$tmp" 2>/dev/null || sync
mv -f "$tmp" "$1" || exit 1
trap - EXIT
sync "$dir" 2>/dev/null || sync
"""
)
"""``sh -c WRITE_FILE sh PATH MODE SIZE`` with exactly SIZE bytes on stdin.

MODE is octal digits, or empty: keep the mode of the file being replaced, or follow the
umask for a new one. The file appears at PATH atomically (temporary name in the same
directory, fsync, rename, fsync of the directory) or not at all.
"""


def read_argv(path: str) -> list[str]:
    """The argv that prints ``path``'s bytes (see :data:`READ_FILE`)."""
    return ["sh", "-c", READ_FILE, "sh", path]


def write_argv(path: str, size: int, mode: int | None) -> list[str]:
    """The argv that atomically writes ``size`` bytes from stdin to ``path``."""
    return ["sh", "-c", WRITE_FILE, "sh", path, "" if mode is None else f"{mode:o}", str(size)]
