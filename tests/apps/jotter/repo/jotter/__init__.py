"""Jotter: notes in a SQLite file; `create_app()` is found by `flask` (FLASK_APP=jotter)."""

import os

from flask import Flask, redirect, render_template, request
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import text

db = SQLAlchemy()


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get("DATABASE_URL", "sqlite:////data/jotter.db")
    db.init_app(app)
    Migrate(app, db, directory=os.path.join(os.path.dirname(os.path.dirname(__file__)), "migrations"))
    from .models import Note

    @app.get("/")
    def notes():
        rows = db.session.execute(db.select(Note).order_by(Note.id)).scalars().all()
        return render_template("index.html", notes=rows)

    @app.post("/notes")
    def add_note():
        db.session.add(Note(text=request.form["text"]))
        db.session.commit()
        return redirect("/", code=303)

    @app.get("/health")
    def health():
        count = db.session.execute(text("SELECT count(*) FROM notes")).scalar_one()
        return f"jotter ok: {count} notes\n"

    return app
