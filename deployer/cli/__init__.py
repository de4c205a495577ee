"""The ``deployer`` command line: typer commands, thin over :mod:`deployer.api`."""

from __future__ import annotations

from deployer.cli.app import app, main

__all__ = ["app", "main"]
