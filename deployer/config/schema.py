"""The JSON Schema of ``deploy.toml``, generated from the models that validate it.

Editors validate and complete the file with it (Taplo / Even Better TOML: see
docs/configuration.md); ``deployer config schema`` prints it. It is draft 7, with every
table written out where it is used (no ``$ref``): what editors' validators read, Taplo's
among them, and they show a key's description only where no ``$ref`` stands beside it. The models in
:mod:`deployer.config` stay the one source: this module only turns what pydantic derives
from them into what an editor needs —

* each key's description says what it means, then what it takes (the text deployer's own
  error messages use), and its default;
* a string may hold ``${NAME}`` where a pattern would refuse it (deployer resolves it first);
* TOML has no null: ``X | None`` is just ``X``, not set;
* names of environments and variables that break their pattern are refused, not ignored;
* ``hosts`` entries may be strings, and an environment names ``host`` or ``hosts``.

What the schema cannot say (a path with ``..``, a host that does not parse, an ordering
of hosts) the file's own check still says, with ``deployer config check``.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from pydantic import BaseModel

# Draft 7: what editors' validators read (Taplo's among them), and all this schema needs.
DRAFT = "http://json-schema.org/draft-07/schema#"

# What each key means (the table in docs/configuration.md, in short), by model and key. A
# test checks that every key of every model has one.
MEANINGS: dict[str, dict[str, str]] = {
    "App": {
        "name": "The compose project name on every host, and the prefix of release records.",
        "compose_file": "The compose file, relative to the repository root.",
        "web_service": "The compose service of the application: its new image runs the migration.",
        "db_service": "The compose service of the database: started first, backed up before a migration.",
        "migrations_dir": "The Flask-Migrate / alembic migrations directory, relative to the repository root.",
        "migrate_command": "The command run in a one-off container of the new web image to upgrade the schema.",
        "migrate_timeout": "How long the migration may run before it is stopped and the release fails.",
        "branch": "The git branch released by default.",
        "database_url_variable": "The web service's variable holding the database URL, when it is neither "
                                 "DATABASE_URL nor SQLALCHEMY_DATABASE_URI.",
    },
    "Environment": {
        "host": "Where the environment runs: \"local\" for this machine, or a server over SSH (an ~/.ssh/config alias works).",
        "hosts": "Instead of host: several hosts; the primary runs the database, the backup and the migration.",
        "rollout": "With several hosts: how many switch at a time, and the pause between batches.",
        "path": "The absolute path of the git checkout on the host, kept at the released commit.",
        "healthcheck_url": "A URL, as seen from the host, that must answer after a release; make it read the database.",
        "backup_dir": "The directory on the host for the dumps taken before each migration.",
        "state_dir": "The directory on the host for deployer's own files (journal, lock, step log, env file); "
                     "beside the checkout by default, never inside it.",
        "healthcheck_command": "A command run in the new web container: healthy when it exits 0.",
        "healthcheck_headers": "Headers sent with the health request (values never printed).",
        "healthcheck_status": "The status(es) the health URL must answer (default: any 2xx).",
        "healthcheck_body": "Text the health page's body must contain.",
        "keep_backups": "How many of the newest dumps are kept when old ones are pruned.",
        "playbook": "The playbook (ordered steps) of a release: playbooks/NAME.toml, or built-in release or classic.",
        "health_timeout": "How long the health checks may keep trying before the release counts as failed.",
        "branch": "The branch released to this environment by default (default: the app's).",
        "remote": "The git remote the commit is resolved on and the host fetches from (default: origin's URL).",
        "env": "Variables for docker compose on the host (a mode-0600 env file): what the compose file interpolates.",
        "database_url": "A SQLAlchemy URL to the database; usually found in the compose file instead.",
        "proxy": "Zero-downtime releases: HAProxy in front of the web service (an empty table infers the rest).",
        "lock_timeout": "PostgreSQL: how long a statement of the migration may wait for a lock.",
        "lock_retries": "How many times a migration that gave up waiting for a lock is tried again.",
        "migration_policy": "What the migration safety gate does about a migration that locks or rewrites a big table.",
        "lint_min_rows": "Rows from which a table counts as big for the migration safety gate.",
        "backup_copy": ('Where every backup is copied besides backup_dir: "local:DIR" on the machine running deployer '
                        'and/or "host:HOST:DIR" on another host; checksummed where it arrives (see docs/backups.md).'),
        "keep_releases": ("How many of the newest successful releases keep their images for a rollback (the running "
                          "one is kept too); a release prunes the others' image tags after it is journaled."),
        "engine": ("What runs the services: docker compose on each host, or Docker Swarm across the hosts "
                   "(the nodes of one swarm, the primary a manager; see docs/swarm.md)."),
    },
    "HostEntry": {
        "host": "The host: \"[user@]host[:port]\" or an ~/.ssh/config alias.",
        "roles": "The compose services this host runs (default: all; all but the database on the others).",
        "primary": "The one host that runs the database, takes the backup and migrates (default: the first).",
        "env": "Variables for this host only, over the environment's env.",
    },
    "Rollout": {
        "batch": "Hosts switched at a time, each batch healthy before the next.",
        "pause": "Seconds between batches.",
    },
    "Proxy": {
        "listen": "The host port the proxy publishes (default: where the compose file publishes the web service).",
        "web_port": "The port the app listens on inside its container (default: from its ports).",
        "image": "The HAProxy image (2.4 or later).",
        "mode": "How a release swaps: old and new code side by side (overlap), requests held (pause), or decided "
                "from the migrations (auto).",
        "pause_timeout": "In pause mode, how long a request may be held.",
        "drain_timeout": "How long the old container gets to finish the requests in flight after the switch.",
    },
}
# The table each model is, as deploy.toml writes it.
TABLES = {"App": "[app]", "Environment": "[environments.NAME]", "HostEntry": "an entry of hosts",
          "Rollout": "rollout", "Proxy": "[environments.NAME.proxy]"}
# A pattern also lets a value through when it takes text from the environment.
_INTERPOLATED = r"\$\{[A-Za-z_]"


def models() -> dict[str, type[BaseModel]]:
    """The schema's models by the name they have in it (their class names, without ``_``)."""
    from deployer import config

    return {"App": config._App, "Environment": config._Environment, "HostEntry": config._HostEntry,
            "Rollout": config._Rollout, "Proxy": config._Proxy}


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a deploy.toml file (draft 7, every table inline: see the module docstring)."""
    from deployer import config

    raw = config._File.model_json_schema()
    tables = {name.lstrip("_"): body for name, body in raw["$defs"].items()}
    for name, body in tables.items():
        body["title"] = TABLES[name]
        for key, prop in body["properties"].items():
            body["properties"][key] = _property(prop, MEANINGS[name][key])
    environment = tables["Environment"]
    environment["oneOf"] = [{"required": ["host"], "not": {"required": ["hosts"]}},
                            {"required": ["hosts"], "not": {"required": ["host"]}}]
    hosts = environment["properties"]["hosts"]
    hosts["items"] = {"anyOf": [{"type": "string", "description": MEANINGS["HostEntry"]["host"]}, hosts["items"]]}
    hosts["minItems"] = 1
    environments = raw["properties"]["environments"]
    environments.pop("title", None)
    environments["additionalProperties"] = False
    schema = {
        "$schema": DRAFT,
        "title": "deploy.toml",
        "description": "deployer's configuration: what is deployed ([app]) and where ([environments.NAME]). "
                       "Every key: docs/configuration.md.",
        "type": "object",
        "properties": {
            "app": {**raw["properties"]["app"], "description": "What is deployed, the same in every environment."},
            "environments": {**environments, "description": "One table per place the app is deployed to: "
                             "[environments.NAME], NAME being what the command line takes."},
        },
        "required": ["app", "environments"],  # environments: at least one (a default pydantic fills, then refuses)
        "additionalProperties": False,
    }
    return _inline(schema, tables)


def _inline(node: Any, tables: dict[str, Any]) -> Any:
    """``node`` with every ``$ref`` to a table replaced by the table itself (the file has no
    recursion; editors ignore what stands beside a ``$ref``, such as a description)."""
    if isinstance(node, list):
        return [_inline(item, tables) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].rpartition("/")[2].lstrip("_")
        table = _inline(copy.deepcopy(tables[name]), tables)
        beside = {key: value for key, value in node.items() if key != "$ref"}  # the key's own description
        return {**table, **beside}
    return {key: _inline(value, tables) for key, value in node.items()}


def _property(prop: dict[str, Any], meaning: str) -> dict[str, Any]:
    """One key's schema as an editor needs it (see the module docstring)."""
    prop = copy.deepcopy(prop)
    prop.pop("title", None)
    expected = prop.pop("description", "")
    alternatives = [alt for alt in prop.pop("anyOf", []) if alt.get("type") != "null"]
    if alternatives:
        prop.update(alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives})
    if prop.get("default", "") is None:
        del prop["default"]
    _open_patterns(prop)
    default = f" Default: {json.dumps(prop['default'])}." if "default" in prop and prop["default"] not in ({}, []) else ""
    return {"description": f"{meaning} Expected: {expected}.{default}" if expected else meaning + default, **prop}


def _open_patterns(node: Any) -> None:
    """Let ``${NAME}`` through every string pattern; refuse keys that break a key pattern."""
    if isinstance(node, list):
        for item in node:
            _open_patterns(item)
        return
    if not isinstance(node, dict):
        return
    if node.get("type") == "string" and "pattern" in node:
        node["pattern"] = f"(?:{node['pattern']})|{_INTERPOLATED}"
    if "patternProperties" in node:
        node["additionalProperties"] = False
    for value in node.values():
        _open_patterns(value)
