"""HTTP endpoints: the recipe list and the health check the deployer polls."""

from __future__ import annotations

from alembic.runtime.migration import MigrationContext
from flask import Blueprint, current_app, jsonify, render_template
from flask.typing import ResponseReturnValue
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from . import db
from .models import Recipe

bp = Blueprint("recipes", __name__)


@bp.get("/")
def index() -> ResponseReturnValue:
    """List the recipes; reads every mapped column, so a schema behind the code fails here."""
    recipes = db.session.execute(db.select(Recipe).order_by(Recipe.id)).scalars().all()
    return render_template("index.html", recipes=recipes, version=current_app.config["APP_VERSION"])


@bp.get("/health")
def health() -> ResponseReturnValue:
    """200 with the database's alembic revision when the database answers, 503 otherwise."""
    version = current_app.config["APP_VERSION"]
    try:
        with db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            # MigrationContext copes with a database that was never migrated (no table yet).
            heads = sorted(MigrationContext.configure(connection).get_current_heads())
    except SQLAlchemyError as exc:
        current_app.logger.warning("health check: database unreachable: %s", exc)
        body = {"status": "error", "error": "database unreachable", "version": version}
        return jsonify(body), 503
    revision = heads[0] if len(heads) == 1 else (",".join(heads) or None)
    return jsonify({"status": "ok", "revision": revision, "revisions": heads, "version": version})
