"""deploy.toml's JSON Schema (``deployer config schema``), checked with the ``jsonschema``
validator: it accepts every deploy.toml we ship or test with, refuses broken ones as
deployer's own loader does, and describes every key."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator

from deployer.config import load_config
from deployer.config.schema import MEANINGS, json_schema, models
from deployer.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
APPS = sorted((REPO_ROOT / "tests" / "apps").glob("*/deploy.toml"))
# What the test bench fills into the corpus' deploy.toml templates (tests/bench/apps.py).
BENCH_VALUES = {"NAME": "demo", "ENV": "production", "HOST": "deploy@203.0.113.10", "PATH": "/srv/demo",
                "WEB_PORT": "8000", "PYTHON_IMAGE": "python:3.11-slim", "POSTGRES_IMAGE": "postgres:15",
                "MARIADB_IMAGE": "mariadb:10.11", "SECRETS_DIR": "/srv/secrets"}


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    schema = json_schema()
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def rendered(path: Path) -> str:
    text = path.read_text()
    for key, value in BENCH_VALUES.items():
        text = text.replace(f"@@{key}@@", value)
    assert not re.search(r"@@[A-Z_]+@@", text), f"{path}: a placeholder the test does not fill"
    return text


def problems(validator: Draft7Validator, document: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path)) or '(file)'}: {e.message}" for e in validator.iter_errors(document)]


def test_the_repositorys_deploy_toml_is_valid(validator: Draft7Validator) -> None:
    document = tomllib.loads((REPO_ROOT / "deploy.toml").read_text())
    assert problems(validator, document) == []


@pytest.mark.parametrize("path", APPS, ids=lambda p: p.parent.name)
def test_every_deploy_toml_of_the_app_corpus_is_valid(validator: Draft7Validator, path: Path) -> None:
    assert problems(validator, tomllib.loads(rendered(path))) == []


def test_the_corpus_is_all_there() -> None:
    assert {p.parent.name for p in APPS} >= {"blog", "shop", "tasks", "vault", "jotter", "members"}


BASE = """\
[app]
name = "recipes"

[environments.production]
host = "deploy@203.0.113.10"
path = "/srv/recipes"
"""

# (id, deploy.toml text, the key path the validator names) — each also refused by deployer's loader.
BROKEN = [
    ("no-app", '[environments.production]\nhost = "local"\npath = "/srv/x"\n', "(file)"),
    ("no-environments", '[app]\nname = "recipes"\n', "(file)"),
    ("misspelt-table", BASE.replace("[app]", "[aplication]"), "(file)"),
    ("unknown-app-key", BASE.replace('name = "recipes"', 'name = "recipes"\ncompose_fle = "x.yml"'), "app"),
    ("name-pattern", BASE.replace('"recipes"', '"Recipes App"'), "app.name"),
    ("string-for-int", BASE + 'keep_backups = "10"\n', "environments.production.keep_backups"),
    ("zero-backups", BASE + "keep_backups = 0\n", "environments.production.keep_backups"),
    ("bool-for-number", BASE + "health_timeout = true\n", "environments.production.health_timeout"),
    ("no-host", BASE.replace('host = "deploy@203.0.113.10"\n', ""), "environments.production"),
    ("host-and-hosts", BASE + 'hosts = ["a", "b"]\n', "environments.production"),
    ("empty-hosts", BASE.replace('host = "deploy@203.0.113.10"', "hosts = []"), "environments.production.hosts"),
    ("hosts-entry-key", BASE.replace('host = "deploy@203.0.113.10"', 'hosts = [{host = "a", role = ["web"]}]'),
     "environments.production.hosts.0"),
    ("environment-name", BASE.replace("[environments.production]", '[environments."prod env"]'), "environments"),
    ("variable-name", BASE + '[environments.production.env]\n1PORT = "8000"\n', "environments.production.env"),
    ("variable-not-string", BASE + "[environments.production.env]\nWEB_PORT = 8000\n", "environments.production.env.WEB_PORT"),
    ("proxy-mode", BASE + '[environments.production.proxy]\nmode = "always"\n', "environments.production.proxy.mode"),
    ("proxy-port", BASE + "[environments.production.proxy]\nweb_port = 70000\n", "environments.production.proxy.web_port"),
    ("policy", BASE + 'migration_policy = "maybe"\n', "environments.production.migration_policy"),
]


@pytest.mark.parametrize(("text", "where"), [case[1:] for case in BROKEN], ids=[case[0] for case in BROKEN])
def test_broken_files_are_refused_by_the_schema_and_by_deployer(
    validator: Draft7Validator, tmp_path: Path, text: str, where: str
) -> None:
    found = problems(validator, tomllib.loads(text))
    assert found, f"the schema accepts:\n{text}"
    assert any(line.startswith(f"{where}: ") for line in found), found
    (tmp_path / "deploy.toml").write_text(text)
    with pytest.raises(ConfigError):
        config = load_config(cwd=tmp_path, environ={})
        for name in config.environment_names:
            config.environment(name)


def test_interpolated_text_passes_a_pattern(validator: Draft7Validator) -> None:
    """deployer resolves ${NAME} before it checks a pattern: the editor must not refuse it."""
    document = tomllib.loads(BASE.replace('"recipes"', '"${APP_NAME}"') + 'playbook = "${PLAYBOOK:-release}"\n')
    assert problems(validator, document) == []


def test_every_key_is_described_with_what_it_means_and_takes() -> None:
    schema = json_schema()
    environment = schema["properties"]["environments"]["patternProperties"]["^[A-Za-z0-9_-]+$"]
    tables = {"App": schema["properties"]["app"], "Environment": environment, "Proxy": environment["properties"]["proxy"],
              "Rollout": environment["properties"]["rollout"],
              "HostEntry": environment["properties"]["hosts"]["items"]["anyOf"][1]}
    for name, model in models().items():
        assert set(MEANINGS[name]) == set(model.model_fields), name
        for key, prop in tables[name]["properties"].items():
            assert prop["description"].startswith(MEANINGS[name][key]), (name, key)
            info = model.model_fields[key]
            if info.description:
                assert f"Expected: {info.description}." in prop["description"], (name, key)
    env = schema["properties"]["environments"]["patternProperties"]["^[A-Za-z0-9_-]+$"]["properties"]
    assert env["keep_backups"]["description"].endswith("Default: 10.")
    assert "null" not in json.dumps(schema)  # TOML has no null
    assert "$ref" not in json.dumps(schema)  # editors show no description beside a $ref
