"""``${NAME}`` interpolation of deploy.toml string values, and keeping the secrets it yields out of output.

The syntax is the familiar subset of docker compose's:

* ``${NAME}``            the variable's value; an error when NAME is not set;
* ``${NAME:-default}``   the variable's value, or ``default`` when NAME is unset or empty;
* ``$${``                a literal ``${`` (any other ``$`` is already literal, so a password
                         containing ``$`` needs no escaping).

Values that came from the environment (not from a default) are returned as *secrets*:
:func:`redact` keeps them out of anything printed. A variable that is not set can be
*deferred* for chosen key paths: the string is then kept as written and the error returned,
so that a missing secret of one environment only matters when that environment is used.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

REDACTED = "***"
# Shorter secrets are hidden in structured output, but not scrubbed from free text:
# replacing every "1" or "db" in a log would make it unreadable and hide little.
MIN_SCRUB_LENGTH = 4
_SECRET_KEY = re.compile(r"passw(or)?d|pwd|(^|_)pass($|_)|secret|token|api_?key|private_?key|credential", re.I)
# Variables that name an image, a tag, a port or a version hold no secret: their values stay
# readable in output (status shows the images that run). Every other value taken from the
# environment is treated as a secret, whatever its name (a SENTRY_DSN holds a key).
_PLAIN_VARIABLE = re.compile(r"(^|_)(IMAGE|TAG|PORT|VERSION)$", re.I)

# One token at a time: an escaped "$${", a complete "${...}", or an unterminated "${".
_TOKEN = re.compile(r"\$\$\{|\$\{(?P<body>[^}]*)\}|\$\{")
_REFERENCE = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)

KeyPath = tuple[str, ...]


class InterpolationError(ValueError):
    """A ``${...}`` could not be resolved; ``path`` is the key path of the string holding it."""

    def __init__(self, message: str, path: KeyPath = ()) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


class MissingVariableError(InterpolationError):
    """A ``${NAME}`` without a default whose variable is not set."""

    def __init__(self, message: str, name: str, path: KeyPath = ()) -> None:
        super().__init__(message, path)
        self.name = name


@dataclass(frozen=True)
class Interpolated:
    """A resolved string and the values in it that came from the environment."""

    value: str
    secrets: tuple[str, ...] = ()


def interpolate(text: str, environ: Mapping[str, str]) -> Interpolated:
    """Resolve every ``${...}`` in ``text`` from ``environ``.

    Raises :class:`InterpolationError` (with an empty path) for a variable that is not set
    and has no default, and for a malformed reference.
    """
    parts: list[str] = []
    secrets: list[str] = []
    position = 0
    for match in _TOKEN.finditer(text):
        parts.append(text[position : match.start()])
        position = match.end()
        token = match.group(0)
        if token == "$${":
            parts.append("${")
        elif match.group("body") is None:
            raise InterpolationError(
                f"unterminated \"${{\" at character {match.start() + 1}: expected ${{NAME}} "
                "or ${NAME:-default} (write $${ for a literal ${)"
            )
        else:
            value, secret = _resolve(match.group("body"), environ)
            parts.append(value)
            if secret:
                secrets.append(value)
    parts.append(text[position:])
    return Interpolated("".join(parts), tuple(secrets))


def _resolve(body: str, environ: Mapping[str, str]) -> tuple[str, bool]:
    """The value of one ``${body}`` and whether it came from the environment."""
    reference = _REFERENCE.fullmatch(body)
    if reference is None:
        raise InterpolationError(
            f"invalid variable reference \"${{{body}}}\": expected ${{NAME}} or ${{NAME:-default}} "
            "where NAME is letters, digits and \"_\", not starting with a digit "
            "(write $${ for a literal ${)"
        )
    name, default = reference.group("name"), reference.group("default")
    value = environ.get(name)
    plain = bool(_PLAIN_VARIABLE.search(name)) and not _SECRET_KEY.search(name)
    if default is not None:
        # ":-" semantics, as in compose and POSIX sh: empty counts as unset.
        return (value, not plain) if value else (default, False)
    if value is None:
        raise MissingVariableError(
            f"environment variable {name} is not set: export {name}=... before running "
            f"deployer, or give a default with ${{{name}:-default}}",
            name,
        )
    return value, bool(value) and not plain


@dataclass(frozen=True)
class ResolvedTree:
    """The result of :func:`interpolate_tree`."""

    data: Any
    secrets: frozenset[str]
    # Strings left as written because a variable is missing there, by key path.
    deferred: Mapping[KeyPath, MissingVariableError] = field(default_factory=dict)


def interpolate_tree(
    data: Any,
    environ: Mapping[str, str],
    *,
    defer: Callable[[KeyPath], bool] = lambda path: False,
) -> ResolvedTree:
    """Interpolate every string inside parsed TOML (tables, arrays, strings).

    An error carries the key path of the offending string (array items as ``[index]``).
    A missing variable in a string whose path satisfies ``defer`` is not raised: the string
    stays as written and the error is listed in ``deferred``. Malformed references always raise.
    """
    secrets: set[str] = set()
    deferred: dict[KeyPath, MissingVariableError] = {}

    def walk(node: Any, here: KeyPath) -> Any:
        if isinstance(node, str):
            try:
                result = interpolate(node, environ)
            except MissingVariableError as error:
                located = MissingVariableError(error.message, error.name, here)
                if not defer(here):
                    raise located from None
                deferred[here] = located
                return node
            except InterpolationError as error:
                raise InterpolationError(error.message, here) from None
            secrets.update(result.secrets)
            return result.value
        if isinstance(node, dict):
            return {key: walk(value, (*here, key)) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item, (*here, f"[{index}]")) for index, item in enumerate(node)]
        return node

    data = walk(data, ())
    return ResolvedTree(data, frozenset(secrets), deferred)


def redact(text: str, secrets: Iterable[str], min_length: int = MIN_SCRUB_LENGTH) -> str:
    """``text`` with each secret replaced by ``***`` (longest first: one may contain another)."""
    for secret in sorted((s for s in secrets if len(s) >= min_length), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def looks_secret(key: str) -> bool:
    """Whether a variable named ``key`` holds a secret by its name (``DB_PASSWORD``, ``API_TOKEN``...)."""
    return _SECRET_KEY.search(key) is not None


def url_password(url: str) -> str | None:
    """The password written in ``scheme://user:password@host/...``, if any (as written: maybe %-encoded)."""
    userinfo, at, _ = urlsplit(url).netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    return password if at and colon else None


def mask_url_password(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``."""
    if url_password(url) is None:
        return url
    parts = urlsplit(url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{userinfo.partition(':')[0]}:{REDACTED}@{hostport}").geturl()
