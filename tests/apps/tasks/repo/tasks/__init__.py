"""Tasks: `create_app()` for gunicorn and flask; the worker lives in tasks.worker."""

import os

from flask import Flask, redirect, render_template, request
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import text

db = SQLAlchemy()


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg2://", 1)
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_pre_ping": True}
    db.init_app(app)
    Migrate(app, db, directory=os.path.join(os.path.dirname(os.path.dirname(__file__)), "migrations"))
    from .models import Task

    @app.get("/")
    def index():
        tasks = db.session.execute(db.select(Task).order_by(Task.id)).scalars().all()
        return render_template("index.html", tasks=tasks)

    @app.post("/tasks")
    def add():
        db.session.add(Task(title=request.form["title"]))
        db.session.commit()
        return redirect("/", code=303)

    @app.get("/healthz")
    def healthz():
        db.session.execute(text("SELECT count(*) FROM tasks"))
        return "ok\n"

    return app
