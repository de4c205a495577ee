"""``~/.ssh/config`` read the way OpenSSH's ``ssh`` reads it, for one host at a time.

paramiko's ``SSHConfig`` does not follow ``Include`` and silently drops every option it does
not know, so a config that routes a host through a bastion or pins its host key algorithms
would be obeyed only in part. This module evaluates a config for one host as ``ssh -G``
does (first obtained value wins; ``Host`` and ``Match`` blocks; ``Include`` with globs,
``~/.ssh``-relative paths and a depth limit; ``%`` tokens and ``${VAR}``), and classifies
every keyword it meets in a block that applies to the host:

* honoured — turned into connection settings (:class:`HostConfig`);
* harmless — only matters to an interactive ``ssh`` (X11, agent forwarding, multiplexing,
  logging, environment passing...), so ignoring it cannot change where or how we connect;
* refused — would change where or how we connect, and deployer cannot do it: a
  :class:`~deployer.errors.ConfigError` names the file, the line and the option.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import re
import socket
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from deployer.errors import ConfigError

# OpenSSH's READCONF_MAX_DEPTH: how deeply Include may nest.
MAX_INCLUDE_DEPTH = 16
SYSTEM_CONFIG = "/etc/ssh/ssh_config"
SYSTEM_CONFIG_DIR = "/etc/ssh"

# Keywords whose value is the rest of the line, kept verbatim (a shell command).
_RAW_VALUE = {"proxycommand", "localcommand", "remotecommand", "knownhostscommand"}

# Turned into connection settings, some only for some values (checked in _check_value).
_HONOURED = {
    "hostname",
    "user",
    "port",
    "identityfile",
    "identitiesonly",
    "identityagent",
    "userknownhostsfile",
    "globalknownhostsfile",
    "connecttimeout",
    "connectionattempts",
    "proxyjump",
    "proxycommand",
    "serveraliveinterval",
    "serveralivecountmax",
    "tcpkeepalive",
    "addressfamily",
    "compression",
    # deployer never trusts an unknown or changed key, whatever this says: it can only
    # make ssh less strict than deployer, never the other way round.
    "stricthostkeychecking",
    "canonicalizehostname",
    "proxyusefdpass",
    "pubkeyauthentication",
    "ignoreunknown",
}

# Options that only an interactive ssh session uses, or that can only make ssh more
# lenient than deployer (which never prompts and never accepts an unverified key).
_HARMLESS = {
    "addkeystoagent",
    "batchmode",
    "canonicaldomains",
    "canonicalizefallbacklocal",
    "canonicalizemaxdots",
    "canonicalizepermittedcnames",
    "challengeresponseauthentication",
    "channeltimeout",
    "checkhostip",
    "clearallforwardings",
    "controlmaster",
    "controlpath",
    "controlpersist",
    "dynamicforward",
    "enableescapecommandline",
    "escapechar",
    "exitonforwardfailure",
    "fingerprinthash",
    "forkafterauthentication",
    "forwardagent",
    "forwardx11",
    "forwardx11timeout",
    "forwardx11trusted",
    "gatewayports",
    "gssapiauthentication",
    "gssapidelegatecredentials",
    "gssapikeyexchange",
    "gssapiclientidentity",
    "gssapiserveridentity",
    "gssapirenewalforcesrekey",
    "gssapitrustdns",
    "gssapikexalgorithms",
    "hashknownhosts",
    "hostbasedauthentication",
    "hostbasedacceptedalgorithms",
    "hostbasedkeytypes",
    "ipqos",
    "kbdinteractiveauthentication",
    "kbdinteractivedevices",
    "localcommand",
    "localforward",
    "loglevel",
    "logverbose",
    "nohostauthenticationforlocalhost",
    "numberofpasswordprompts",
    "obscurekeystroketiming",
    "passwordauthentication",
    "permitlocalcommand",
    "permitremoteopen",
    "preferredauthentications",
    "protocol",
    "rekeylimit",
    "remotecommand",
    "remoteforward",
    "requesttty",
    "sendenv",
    "sessiontype",
    "setenv",
    "stdinnull",
    "streamlocalbindmask",
    "streamlocalbindunlink",
    "tag",
    "tunnel",
    "tunneldevice",
    "updatehostkeys",
    "usekeychain",
    "verifyhostkeydns",
    "visualhostkey",
    "xauthlocation",
}

# Known to OpenSSH, and they change where or how ssh connects: deployer cannot honour them.
_REFUSED = {
    "bindaddress": "binding the local end to an address",
    "bindinterface": "binding the local end to an interface",
    "casignaturealgorithms": "restricting CA signature algorithms",
    "certificatefile": "SSH certificates",
    "ciphers": "choosing ciphers",
    "hostkeyalgorithms": "choosing host key algorithms",
    "hostkeyalias": "verifying the host key under another name",
    "kexalgorithms": "choosing key exchange algorithms",
    "knownhostscommand": "host keys from a command",
    "macs": "choosing MAC algorithms",
    "pkcs11provider": "keys from a PKCS#11 token",
    "pubkeyacceptedalgorithms": "restricting public key algorithms",
    "pubkeyacceptedkeytypes": "restricting public key algorithms",
    "requiredrsasize": "a minimum RSA key size",
    "revokedhostkeys": "a revoked host keys file",
    "securitykeyprovider": "FIDO security keys",
}

_ALL_TOKENS = "%CdhijkLlnpru"
# Which % tokens each keyword accepts (ssh_config(5), TOKENS).
_TOKENS_FOR = {
    "hostname": "%h",
    "proxycommand": "%hnpr",
    "proxyjump": "%hnpr",
    "identityfile": _ALL_TOKENS,
    "identityagent": _ALL_TOKENS,
    "userknownhostsfile": _ALL_TOKENS,
    "user": _ALL_TOKENS,
}
_ENV_EXPANDED = {"identityfile", "identityagent", "userknownhostsfile"}
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

_MATCH_SUPPORTED = {"all", "host", "originalhost", "user", "localuser"}
_MATCH_KNOWN = _MATCH_SUPPORTED | {
    "canonical",
    "final",
    "exec",
    "localnetwork",
    "tagged",
    "version",
    "command",
    "sessiontype",
}


@dataclass(frozen=True)
class Setting:
    """One value from the config, with where it came from (for messages)."""

    keyword: str  # as written in the file ("ProxyJump")
    args: tuple[str, ...]
    raw: str  # the rest of the line after the keyword, verbatim
    path: str
    line: int

    @property
    def where(self) -> str:
        """``FILE line N``."""
        return f"{self.path} line {self.line}"

    @property
    def value(self) -> str:
        """The first argument (most keywords take exactly one)."""
        return self.args[0] if self.args else ""


@dataclass(frozen=True)
class HostConfig:
    """What the config says for one host: the settings deployer uses, tokens expanded.

    ``None`` (or an empty tuple) means "not set": the caller applies its defaults.
    """

    host: str  # the name as given (alias or address)
    hostname: str
    user: str | None
    port: int | None
    identity_files: tuple[str, ...] = ()
    identities_only: bool = False
    use_agent: bool = True
    user_known_hosts_files: tuple[str, ...] | None = None
    global_known_hosts_files: tuple[str, ...] | None = None
    connect_timeout: float | None = None
    connection_attempts: int | None = None
    # Hops as written (``[user@]host[:port]`` or an alias), first hop first; () = none.
    proxy_jump: tuple[str, ...] = ()
    proxy_command: str | None = None
    server_alive_interval: float | None = None
    server_alive_count_max: int | None = None
    tcp_keepalive: bool = True
    address_family: str = "any"
    compression: bool = False
    # Where each honoured value came from, for messages ("hostname" -> "FILE line 3").
    sources: dict[str, str] = field(default_factory=dict, compare=False)


class SSHConfig:
    """An ssh client configuration: the user's file and, like ssh, the system one.

    Nothing is cached: each :meth:`lookup` reads the files again, as a new ``ssh`` would.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        system_path: str | os.PathLike[str] | None = None,
        home: str | os.PathLike[str] | None = None,
    ) -> None:
        """``path`` is read first, then ``system_path`` (None: skip it).

        ``home`` is where ``~`` and ``~/.ssh``-relative Includes point (``$HOME`` by default).
        """
        self.path = os.fspath(path) if path is not None else None
        self.system_path = os.fspath(system_path) if system_path is not None else None
        self.home = os.fspath(home) if home is not None else str(Path.home())

    @classmethod
    def default(cls) -> SSHConfig:
        """``~/.ssh/config`` then ``/etc/ssh/ssh_config``, as ``ssh`` without ``-F`` reads."""
        home = str(Path.home())
        return cls(
            os.path.join(home, ".ssh", "config"), system_path=SYSTEM_CONFIG, home=home
        )

    def lookup(
        self, host: str, *, user: str | None = None, port: int | None = None
    ) -> HostConfig:
        """Evaluate the config for ``host``; ``user`` and ``port`` act like ``ssh -l`` / ``-p``.

        Raises :class:`ConfigError` for an unreadable file, a syntax error, an unsupported
        option that applies to ``host``, or an Include nested too deeply.
        """
        state = _Evaluation(self, host.lower())
        if user is not None:
            state.seed("user", user)
        if port is not None:
            state.seed("port", str(port))
        if self.path is not None:
            state.read_file(self.path, depth=0, system=False, required=False)
        if self.system_path is not None:
            state.read_file(self.system_path, depth=0, system=True, required=False)
        return state.result(host)


class _Evaluation:
    """One pass over the config files for one host (ssh's readconf.c, the parts we use)."""

    def __init__(self, config: SSHConfig, host: str) -> None:
        self.config = config
        self.host = host
        self.values: dict[str, Setting] = {}
        self.lists: dict[str, list[Setting]] = {}
        self.ignore_unknown: list[str] = []

    # -- reading ---------------------------------------------------------------------

    def seed(self, key: str, value: str) -> None:
        self.values[key] = Setting(key, (value,), value, "the command line", 0)

    def read_file(self, path: str, *, depth: int, system: bool, required: bool) -> None:
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            if required:
                raise ConfigError(f"cannot read SSH config {path}: it does not exist") from None
            return
        except OSError as exc:
            raise ConfigError(
                f"cannot read SSH config {path}: {exc.strerror or exc}",
                hint="fix the file's permissions; `ssh -G HOST` shows how ssh itself reads it",
            ) from exc
        # A file starts in the state ssh starts every file in: every line applies.
        self._read_lines(text, path, depth=depth, system=system, active=True, never=False)

    def _read_lines(
        self, text: str, path: str, *, depth: int, system: bool, active: bool | None, never: bool
    ) -> None:
        """``active``: the lines apply (True), do not (False), or cannot be decided (None)."""
        for number, line in enumerate(text.splitlines(), start=1):
            parsed = _split_line(line, path, number)
            if parsed is None:
                continue
            setting = parsed
            key = setting.keyword.lower()
            if key == "host":
                active = False if never else self._host_matches(setting)
                continue
            if key == "match":
                active = False if never else self._match(setting)
                continue
            if key == "include":
                self._include(setting, depth=depth, system=system, active=active)
                continue
            if active is False:
                continue
            self._apply(setting, decided=active is True)

    def _include(
        self, setting: Setting, *, depth: int, system: bool, active: bool | None
    ) -> None:
        if not setting.args:
            raise ConfigError(f"{setting.where}: Include needs a file name")
        if depth + 1 > MAX_INCLUDE_DEPTH:
            raise ConfigError(
                f"{setting.where}: Include nested more than {MAX_INCLUDE_DEPTH} levels deep",
                hint="an included file probably includes itself; break the loop",
            )
        for pattern in setting.args:
            expanded = _expand_tilde(pattern, self.config.home, setting)
            if not os.path.isabs(expanded):
                base = SYSTEM_CONFIG_DIR if system else os.path.join(self.config.home, ".ssh")
                expanded = os.path.join(base, expanded)
            for match in sorted(glob.glob(expanded)):
                try:
                    text = Path(match).read_text(encoding="utf-8", errors="replace")
                except IsADirectoryError:
                    continue
                except OSError as exc:
                    raise ConfigError(
                        f"{setting.where}: cannot read the included file {match}: "
                        f"{exc.strerror or exc}"
                    ) from exc
                # ssh: an included file starts in the includer's state, its Host and Match
                # lines never match if the includer's block did not, and they do not change
                # the includer's state after it.
                self._read_lines(
                    text,
                    match,
                    depth=depth + 1,
                    system=system,
                    active=active,
                    never=active is False,
                )

    def _host_matches(self, setting: Setting) -> bool:
        if not setting.args:
            raise ConfigError(f"{setting.where}: Host needs at least one pattern")
        matched = False
        for pattern in setting.args:
            negated = pattern.startswith("!")
            if _pattern_matches(self.host, pattern[1:] if negated else pattern, fold=True):
                if negated:
                    return False
                matched = True
        return matched

    def _match(self, setting: Setting) -> bool | None:
        args = list(setting.args)
        if not args:
            raise ConfigError(f"{setting.where}: Match needs criteria (e.g. Match host NAME)")
        result: bool | None = True
        index = 0
        while index < len(args):
            word = args[index]
            negated = word.startswith("!")
            criterion = (word[1:] if negated else word).lower()
            index += 1
            if criterion not in _MATCH_KNOWN:
                raise ConfigError(f"{setting.where}: unknown Match criterion {word!r}")
            if criterion == "all":
                outcome: bool | None = True
            else:
                if criterion not in ("canonical", "final") and index >= len(args):
                    raise ConfigError(f"{setting.where}: Match {criterion} needs a value")
                value = "" if criterion in ("canonical", "final") else args[index]
                if criterion not in ("canonical", "final"):
                    index += 1
                if criterion not in _MATCH_SUPPORTED:
                    outcome = None
                else:
                    outcome = _pattern_list_matches(self._match_subject(criterion), value)
            if outcome is not None and negated:
                outcome = not outcome
            if outcome is False:
                return False
            if outcome is None:
                result = None
        if result is None:
            return None
        return True

    def _match_subject(self, criterion: str) -> str:
        if criterion == "host":
            hostname = self.values.get("hostname")
            if hostname is not None:
                return hostname.value.replace("%h", self.host).replace("%%", "%")
            return self.host
        if criterion == "originalhost":
            return self.host
        if criterion == "user":
            user = self.values.get("user")
            return user.value if user is not None else _local_user()
        return _local_user()  # localuser

    def _apply(self, setting: Setting, *, decided: bool) -> None:
        key = setting.keyword.lower()
        if not decided:
            # A Match block we cannot evaluate (exec, canonical...): harmless lines may stay,
            # anything that could change the connection must not be guessed at.
            if key in _HARMLESS:
                return
            raise ConfigError(
                f"{setting.where}: {setting.keyword} is set in a Match block whose condition "
                f"deployer cannot evaluate for {self.host} (it supports Match all, host, "
                "originalhost, user and localuser)",
                hint="move the option into a Host block, or use a Host alias for deployer",
            )
        if key in _HARMLESS:
            return
        if key in _REFUSED:
            raise ConfigError(
                f"{setting.where}: {setting.keyword} applies to {self.host}, and deployer does "
                f"not support {_REFUSED[key]}; connecting without it would not be what ssh does",
                hint=f"remove {setting.keyword} from the block that matches {self.host}, or give "
                "deployer its own Host alias without it",
            )
        if key not in _HONOURED:
            if any(fnmatchcase(key, pattern.lower()) for pattern in self.ignore_unknown):
                return
            raise ConfigError(
                f"{setting.where}: unknown option {setting.keyword!r}",
                hint="ssh itself rejects it too (`ssh -G HOST` shows); fix the spelling, "
                "or list it in IgnoreUnknown",
            )
        if key == "ignoreunknown":
            if "ignoreunknown" not in self.values:
                self.values[key] = setting
                self.ignore_unknown = [
                    item for arg in setting.args for item in arg.split(",") if item
                ]
            return
        if key == "identityfile":
            self.lists.setdefault(key, []).append(setting)
            return
        # ProxyJump and ProxyCommand compete: whichever comes first wins (ssh_config(5)).
        if key in ("proxyjump", "proxycommand") and (
            "proxyjump" in self.values or "proxycommand" in self.values
        ):
            return
        self.values.setdefault(key, setting)

    # -- the result ------------------------------------------------------------------

    def result(self, original: str) -> HostConfig:
        values = self.values
        sources = {key: setting.where for key, setting in values.items()}
        for key, settings in self.lists.items():
            sources[key] = settings[0].where
        for key, setting in values.items():
            _check_value(key, setting, self.host)

        # ssh lower-cases the name it was given before it reads the config.
        host = original = original.lower()
        hostname_setting = values.get("hostname")
        hostname = (
            _expand_tokens(hostname_setting, {"h": host}, "hostname")
            if hostname_setting is not None
            else host
        )
        user_setting = values.get("user")
        port = _int_value(values.get("port"), 1, 65535)
        user = user_setting.value if user_setting is not None else None

        local_user = _local_user()
        tokens = {
            "h": hostname,
            "n": original,
            "p": str(port or 22),
            "r": user or local_user,
            "u": local_user,
            "d": self.config.home,
            "i": str(os.getuid()),
            "L": socket.gethostname().split(".")[0],
            "l": socket.gethostname(),
            "k": original,
            "j": values["proxyjump"].value if "proxyjump" in values else "",
        }
        tokens["C"] = hashlib.sha1(
            (tokens["l"] + tokens["h"] + tokens["p"] + tokens["r"] + tokens["j"]).encode()
        ).hexdigest()
        if user_setting is not None and "%" in user_setting.value:
            user = _expand_tokens(user_setting, tokens, "user")

        identity_files = tuple(
            self._path(setting, arg, tokens)
            for setting in self.lists.get("identityfile", [])
            for arg in setting.args
        )
        agent = values.get("identityagent")
        use_agent = agent is None or agent.value != "none"

        user_known = self._path_list(values.get("userknownhostsfile"), tokens)
        global_known = self._path_list(values.get("globalknownhostsfile"), tokens)

        jump: tuple[str, ...] = ()
        proxy_command = None
        if "proxyjump" in values and values["proxyjump"].value.lower() != "none":
            setting = values["proxyjump"]
            text = _expand_tokens(setting, tokens, "proxyjump")
            jump = tuple(item.strip() for item in text.split(",") if item.strip())
            for hop in jump:
                parse_jump(hop, setting)
        if "proxycommand" in values and values["proxycommand"].raw.strip().lower() != "none":
            proxy_command = _expand_tokens(values["proxycommand"], tokens, "proxycommand")

        timeout = _int_value(values.get("connecttimeout"), 0, None)
        alive = _int_value(values.get("serveraliveinterval"), 0, None)
        return HostConfig(
            host=original,
            hostname=hostname,
            user=user,
            port=port,
            identity_files=identity_files,
            identities_only=_yes(values.get("identitiesonly")),
            use_agent=use_agent,
            user_known_hosts_files=user_known,
            global_known_hosts_files=global_known,
            connect_timeout=float(timeout) if timeout else None,
            connection_attempts=_int_value(values.get("connectionattempts"), 1, None),
            proxy_jump=jump,
            proxy_command=proxy_command,
            server_alive_interval=float(alive) if alive is not None else None,
            server_alive_count_max=_int_value(values.get("serveralivecountmax"), 1, None),
            tcp_keepalive=_yes(values.get("tcpkeepalive"), default=True),
            address_family=(values["addressfamily"].value.lower() if "addressfamily" in values else "any"),
            compression=_yes(values.get("compression")),
            sources=sources,
        )

    def _path(self, setting: Setting, arg: str, tokens: dict[str, str]) -> str:
        key = setting.keyword.lower()
        text = _expand_tokens(
            Setting(setting.keyword, (arg,), arg, setting.path, setting.line), tokens, key
        )
        if key in _ENV_EXPANDED:
            text = _expand_env(text, setting)
        return _expand_tilde(text, self.config.home, setting)

    def _path_list(self, setting: Setting | None, tokens: dict[str, str]) -> tuple[str, ...] | None:
        if setting is None:
            return None
        if [arg.lower() for arg in setting.args] == ["none"]:
            return ()
        return tuple(self._path(setting, arg, tokens) for arg in setting.args)


def parse_jump(hop: str, setting: Setting | None = None) -> tuple[str | None, str, int | None]:
    """Split one ProxyJump hop, ``[user@]host[:port]`` or ``ssh://[user@]host[:port]``."""
    text = hop
    if text.startswith("ssh://"):
        text = text[len("ssh://") :].rstrip("/")
    user: str | None = None
    if "@" in text:
        user, text = text.rsplit("@", 1)
    port: int | None = None
    host = text
    if text.startswith("["):
        end = text.find("]")
        if end == -1:
            host = ""
        else:
            host, rest = text[1:end], text[end + 1 :]
            if rest.startswith(":") and rest[1:].isdigit():
                port = int(rest[1:])
            elif rest:
                host = ""
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        port = int(number) if number.isdigit() else -1
    if not host or (user is not None and not user) or (port is not None and not 1 <= port <= 65535):
        where = f"{setting.where}: " if setting is not None else ""
        raise ConfigError(
            f"{where}ProxyJump hop {hop!r} is not [user@]host[:port]",
            hint="separate several jump hosts with commas: ProxyJump bastion,user@10.0.0.5:2222",
        )
    return user, host, port


# -- lines, patterns, tokens --------------------------------------------------------------


def _split_line(line: str, path: str, number: int) -> Setting | None:
    """Parse one config line into keyword + arguments (ssh's strdelim + argv_split)."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    match = re.match(r"([^\s=]+)\s*(?:=\s*|\s+|$)", text)
    if match is None:
        raise ConfigError(f"{path} line {number}: cannot parse {line.strip()!r}")
    keyword = match.group(1)
    raw = text[match.end() :]
    key = keyword.lower()
    if key in _RAW_VALUE:
        if not raw:
            raise ConfigError(f"{path} line {number}: {keyword} needs a value")
        return Setting(keyword, (raw,), raw, path, number)
    args = _split_args(raw, path, number)
    if not args and key not in ("host", "match"):
        raise ConfigError(f"{path} line {number}: {keyword} needs a value")
    return Setting(keyword, tuple(args), raw, path, number)


def _split_args(text: str, path: str, number: int) -> list[str]:
    args: list[str] = []
    current: list[str] = []
    in_word = False
    quote: str | None = None
    index = 0
    while index < len(text):
        char = text[index]
        if quote is not None:
            if char == quote:
                quote = None
            elif char == "\\" and quote == '"' and index + 1 < len(text) and text[index + 1] in '"\\':
                index += 1
                current.append(text[index])
            else:
                current.append(char)
        elif char in "\"'":
            quote = char
            in_word = True
        elif char.isspace():
            if in_word:
                args.append("".join(current))
                current, in_word = [], False
        elif char == "#" and not in_word:
            break  # a comment after the arguments
        elif char == "\\" and index + 1 < len(text) and text[index + 1] in "\"'\\ ":
            index += 1
            current.append(text[index])
            in_word = True
        else:
            current.append(char)
            in_word = True
        index += 1
    if quote is not None:
        raise ConfigError(f"{path} line {number}: unterminated quote")
    if in_word:
        args.append("".join(current))
    return args


def _pattern_matches(subject: str, pattern: str, *, fold: bool) -> bool:
    """ssh's match_pattern: ``*`` and ``?`` wildcards, nothing else special."""
    if fold:
        subject, pattern = subject.lower(), pattern.lower()
    regex = "".join(
        ".*" if char == "*" else "." if char == "?" else re.escape(char) for char in pattern
    )
    return re.fullmatch(regex, subject, flags=re.DOTALL) is not None


def _pattern_list_matches(subject: str, patterns: str) -> bool:
    """ssh's match_pattern_list: comma-separated, ``!`` negates and wins."""
    matched = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        if _pattern_matches(subject, pattern[1:] if negated else pattern, fold=True):
            if negated:
                return False
            matched = True
    return matched


def _expand_tokens(setting: Setting, tokens: dict[str, str], key: str) -> str:
    text = setting.raw.strip() if key == "proxycommand" else setting.value
    allowed = _TOKENS_FOR.get(key, "")
    out: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char != "%":
            out.append(char)
            index += 1
            continue
        if index + 1 >= len(text):
            raise ConfigError(f"{setting.where}: {setting.keyword} ends with a lone '%'")
        token = text[index + 1]
        if token == "%":
            out.append("%")
        elif token in allowed and token in tokens:
            out.append(tokens[token])
        else:
            raise ConfigError(
                f"{setting.where}: {setting.keyword} uses the token %{token}, which "
                f"{'ssh does not define there' if token not in allowed else 'deployer does not support'}",
                hint="write %% for a literal percent sign",
            )
        index += 2
    return "".join(out)


def _expand_env(text: str, setting: Setting) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(
                f"{setting.where}: {setting.keyword} uses ${{{name}}}, which is not set"
            )
        return os.environ[name]

    return _ENV_RE.sub(replace, text)


def _expand_tilde(text: str, home: str, setting: Setting) -> str:
    if not text.startswith("~"):
        return text
    name, sep, rest = text[1:].partition("/")
    if not name:
        base = home
    else:
        try:
            base = pwd.getpwnam(name).pw_dir
        except KeyError:
            raise ConfigError(f"{setting.where}: no such user {name!r} in {text!r}") from None
    return os.path.join(base, rest) if sep else base


def _check_value(key: str, setting: Setting, host: str) -> None:
    """Refuse honoured keywords whose value asks for something deployer cannot do."""
    value = setting.value.lower()
    refused: str | None = None
    if key == "identityagent" and setting.value not in ("none", "SSH_AUTH_SOCK"):
        refused = "an agent socket other than $SSH_AUTH_SOCK"
    elif key == "canonicalizehostname" and value not in ("no", "false"):
        refused = "host name canonicalization"
    elif key == "proxyusefdpass" and value not in ("no", "false"):
        refused = "ProxyUseFdpass"
    elif key == "pubkeyauthentication" and value in ("no", "false"):
        refused = "logging in without a key (it only uses public keys)"
    elif key == "addressfamily" and value not in ("any", "inet", "inet6"):
        raise ConfigError(f"{setting.where}: AddressFamily must be any, inet or inet6")
    elif key in ("identitiesonly", "tcpkeepalive", "compression") and value not in (
        "yes", "no", "true", "false",
    ):
        raise ConfigError(f"{setting.where}: {setting.keyword} must be yes or no")
    if refused is not None:
        raise ConfigError(
            f"{setting.where}: {setting.keyword} {setting.value} applies to {host}, and "
            f"deployer does not support {refused}",
            hint=f"remove it from the block that matches {host}, or give deployer its own "
            "Host alias without it",
        )


def _int_value(setting: Setting | None, low: int, high: int | None) -> int | None:
    if setting is None:
        return None
    text = setting.value
    if not text.isdigit() or int(text) < low or (high is not None and int(text) > high):
        bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise ConfigError(
            f"{setting.where}: {setting.keyword} {text!r} is not a number {bound}"
        )
    return int(text)


def _yes(setting: Setting | None, default: bool = False) -> bool:
    if setting is None:
        return default
    return setting.value.lower() in ("yes", "true")


def _local_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER", "")
