"""The wheel, installed as a user installs it: built with ``pip wheel --no-deps``, put into
a fresh venv outside the repository from the offline wheelhouse (scripts/setup prepares
it; nothing here reaches a package index), then used on one app of the corpus in its own
git repository: ``--version``, ``release --dry-run``, a real ``release``, ``status`` — all
with the venv's ``deployer`` binary, never this repository's code.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.bench.apps import AppDeployment
from tests.bench.cli import result as result_of
from tests.bench.gitrepos import REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("wheel"), pytest.mark.timeout(900)]

WHEELHOUSE = Path(os.environ.get("DEPLOYER_WHEELHOUSE", REPO_ROOT / ".venv" / "wheelhouse"))
# What a source distribution of the project holds: enough to build the wheel.
SOURCE_PATHS = ("pyproject.toml", "README.md", "LICENSE", "deployer")


def offline_pip_env() -> dict[str, str]:
    """pip with no configuration file and no index: only the wheelhouse can be used."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(WHEELHOUSE),
                "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"})
    return env


def run(argv: list[str], *, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, cwd=cwd, env=offline_pip_env(), capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{' '.join(argv)} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@dataclass(frozen=True)
class Installed:
    venv: Path
    wheel: Path

    @property
    def deployer(self) -> Path:
        return self.venv / "bin" / "deployer"


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    """deployer's wheel, installed offline into a new venv in a temporary directory."""
    wheels = sorted(WHEELHOUSE.glob("*.whl")) if WHEELHOUSE.is_dir() else []
    if not wheels:
        pytest.fail(f"no offline wheelhouse at {WHEELHOUSE}: run scripts/setup (it downloads the runtime dependencies)",
                    pytrace=False)
    stamp = WHEELHOUSE / ".setup-stamp"
    wanted = hashlib.sha256((REPO_ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not stamp.is_file() or stamp.read_text().strip() != wanted:
        pytest.fail(f"the wheelhouse at {WHEELHOUSE} was made for another pyproject.toml (its dependencies changed): "
                    "run scripts/setup to refresh it", pytrace=False)
    base = Path(tempfile.mkdtemp(prefix="deployer-wheel-"))
    try:
        source = base / "source"
        source.mkdir()
        for name in SOURCE_PATHS:
            path = REPO_ROOT / name
            if path.is_dir():
                shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            elif path.is_file():
                shutil.copy2(path, source / name)
        dist = base / "dist"
        # the build backend (setuptools, wheel) comes from the wheelhouse too
        run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(dist), str(source)])
        (wheel,) = dist.glob("deployer-*.whl")
        venv = base / "venv"
        run([sys.executable, "-m", "venv", str(venv)])
        run([str(venv / "bin" / "python"), "-m", "pip", "install", str(wheel)])
        yield Installed(venv=venv, wheel=wheel)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_wheel_holds_the_package_and_its_playbooks(installed: Installed) -> None:
    import zipfile

    names = zipfile.ZipFile(installed.wheel).namelist()
    assert "deployer/__init__.py" in names and "deployer/cli/app.py" in names
    assert {"deployer/playbooks/release.toml", "deployer/playbooks/classic.toml"} <= set(names), names
    assert not any(n.startswith(("tests/", "example/")) for n in names)


def test_installed_deployer_releases_an_app(installed: Installed, app_deployment_factory) -> None:  # noqa: ANN001
    d: AppDeployment = app_deployment_factory("blog", "local")
    d.deployer_command = (str(installed.deployer),)

    # the venv's own code answers, not this repository's
    where = subprocess.run([str(installed.venv / "bin" / "python"), "-c", "import deployer; print(deployer.__file__)"],
                           cwd=d.laptop, env=d.environ(), capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(installed.venv)), where
    version = d.deployer("--version")
    from deployer import __version__

    assert version.returncode == 0 and version.stdout.strip() == f"deployer {__version__}", version

    plan = d.deployer("release", d.env_name, "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert d.shape.heads_first[0] in plan.stdout, plan.stdout  # the pending migrations are listed
    assert not d.server_path.exists() and d.project_containers() == [], "the dry run changed the server"

    result = d.release()
    assert result["outcome"] == "succeeded" and d.server_head() == d.head()
    assert d.revision() == d.shape.heads_first
    status, body = d.page()
    assert status == 200 and "Field notes" in body

    shown = d.deployer("status", d.env_name)
    assert shown.returncode == 0, (shown.stdout, shown.stderr)
    assert re.search(r"up to date", shown.stdout), shown.stdout
    as_json = result_of(d.deployer("status", d.env_name, "--json").stdout)
    assert as_json["in_sync"] is True and as_json["code"]["deployed"] == d.head()
