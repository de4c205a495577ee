"""Alembic environment for Flask-Migrate: the engine and metadata come from the Flask app.

Written against APIs shared by Flask-Migrate 4, Flask-SQLAlchemy 3.0/3.1, SQLAlchemy
1.4/2.x and alembic 1.8+, so the same migrations run on Debian's packages and PyPI's.
"""

from __future__ import annotations

import logging
from logging.config import fileConfig
from typing import Any

from alembic import context
from flask import current_app
from sqlalchemy import MetaData
from sqlalchemy.engine import Engine

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)
logger = logging.getLogger("alembic.env")

migrate_ext = current_app.extensions["migrate"]
target_db = migrate_ext.db


def get_engine() -> Engine:
    """The app's engine (`db.engine` works in Flask-SQLAlchemy 2.x and 3.x alike)."""
    return target_db.engine


def get_engine_url() -> str:
    """The URL with its password, escaped for configparser interpolation."""
    url = get_engine().url
    try:
        rendered = url.render_as_string(hide_password=False)
    except AttributeError:  # SQLAlchemy < 1.4.x without render_as_string
        rendered = str(url)
    return rendered.replace("%", "%%")


def get_metadata() -> MetaData:
    """The metadata holding the app's tables (Flask-SQLAlchemy 3 keeps one per bind)."""
    if hasattr(target_db, "metadatas"):
        return target_db.metadatas[None]
    return target_db.metadata


config.set_main_option("sqlalchemy.url", get_engine_url())


def run_migrations_offline() -> None:
    """Emit SQL to stdout instead of running it (`flask db upgrade --sql`)."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=get_metadata(),
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations over a connection from the app's engine."""

    def process_revision_directives(context: Any, revision: Any, directives: list[Any]) -> None:
        # `flask db migrate` with no model changes must not write an empty revision file.
        if getattr(config.cmd_opts, "autogenerate", False):
            script = directives[0]
            if script.upgrade_ops.is_empty():
                directives[:] = []
                logger.info("No changes in schema detected.")

    conf_args = dict(migrate_ext.configure_args)
    conf_args.setdefault("process_revision_directives", process_revision_directives)

    with get_engine().connect() as connection:
        context.configure(connection=connection, target_metadata=get_metadata(), **conf_args)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
