"""The shop's catalogue: an app factory (`create_app`), run by gunicorn and `flask`."""

import os

from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

db = SQLAlchemy()
migrate = Migrate()


def database_uri() -> str:
    """SHOP_DATABASE_URI, with the provider's postgres:// scheme that SQLAlchemy 1.4 refuses fixed."""
    uri = os.environ["SHOP_DATABASE_URI"]
    if uri.startswith("postgres://"):
        uri = "postgresql+psycopg2://" + uri[len("postgres://"):]
    return uri


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_uri()
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 5}}
    app.config["HEALTH_TOKEN"] = os.environ.get("SHOP_HEALTH_TOKEN", "")
    db.init_app(app)
    migrate.init_app(app, db, directory=os.path.join(os.path.dirname(os.path.dirname(__file__)), "migrations"))
    from . import models  # noqa: F401
    from .views import bp

    app.register_blueprint(bp)
    return app
