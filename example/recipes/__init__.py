"""The recipes example app: a small Flask + Flask-SQLAlchemy + Flask-Migrate service.

It is what the deployer ships in its own tests and documentation. The code sticks to APIs
shared by Debian bookworm's packages (Flask 2.2, Flask-SQLAlchemy 3.0, SQLAlchemy 1.4,
alembic 1.8) and current PyPI releases (Flask 3, SQLAlchemy 2).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

db = SQLAlchemy()
migrate = Migrate()

MIGRATIONS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "migrations")


def database_url(environ: Mapping[str, str]) -> str:
    """Return the SQLAlchemy URL from DATABASE_URL, refusing to start without one."""
    url = environ.get("DATABASE_URL", "").strip()
    if not url:
        raise RuntimeError(
            "DATABASE_URL is not set; e.g. postgresql://recipes:PASSWORD@db:5432/recipes"
        )
    # Some hosting platforms still hand out the "postgres://" scheme, which SQLAlchemy
    # 1.4+ no longer accepts. And a bare "postgresql://" means psycopg2 in SQLAlchemy
    # 1.4/2.0 but psycopg (3) from 2.1 on: name the driver the app ships with.
    for scheme in ("postgres://", "postgresql://"):
        if url.startswith(scheme):
            url = "postgresql+psycopg2://" + url[len(scheme):]
    return url


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the Flask application; `config` overrides settings read from the environment."""
    app = Flask(__name__)
    settings: dict[str, Any] = dict(config or {})
    url = settings.pop("SQLALCHEMY_DATABASE_URI", None) or database_url(os.environ)
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    app.config["SQLALCHEMY_TRACK_MODIFICATIONS"] = False
    engine_options: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        # A health check must answer quickly when the database host is gone, not hang.
        engine_options["connect_args"] = {"connect_timeout": 5}
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = engine_options
    app.config["APP_VERSION"] = os.environ.get("APP_VERSION", "dev")
    app.config.update(settings)

    db.init_app(app)
    migrate.init_app(app, db, directory=MIGRATIONS_DIR)

    from . import models  # noqa: F401  (registers the tables with the metadata)
    from .views import bp

    app.register_blueprint(bp)
    return app
