"""HTTP endpoints: the recipe list, a user sign-up API and the health check the deployer polls."""

from __future__ import annotations

from alembic.runtime.migration import MigrationContext
from flask import Blueprint, current_app, jsonify, render_template, request
from flask.typing import ResponseReturnValue
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from . import db
from .models import Recipe, User

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


@bp.post("/api/users")
def create_user() -> ResponseReturnValue:
    """Insert a user from a JSON body ``{"email": ..., "name": ...}``; 201 with its id.

    The 201 is sent only after the row is committed: a client told "created" may rely on it.
    """
    body = request.get_json(silent=True) or {}
    email, name = body.get("email"), body.get("name")
    if not isinstance(email, str) or not email or not isinstance(name, str) or not name:
        return jsonify({"error": "send a JSON object with a non-empty email and name"}), 400
    user = User(email=email, name=name)
    db.session.add(user)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        return jsonify({"error": f"a user with the email {email!r} exists"}), 409
    except SQLAlchemyError as exc:
        db.session.rollback()
        current_app.logger.warning("create user: database error: %s", exc)
        return jsonify({"error": "database unavailable"}), 503
    return jsonify({"id": user.id, "email": user.email}), 201
