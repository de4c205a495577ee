"""Vault: notes in PostgreSQL; the password comes from a secret file, never from the environment."""

import os

from flask import Flask, redirect, render_template, request
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import text
from sqlalchemy.engine import URL


def read_secret(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read().strip()


app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = URL.create(
    "postgresql+psycopg2",
    username="vault",
    password=read_secret(os.environ["DB_PASSWORD_FILE"]),
    host=os.environ.get("DB_HOST", "db"),
    database="vault",
).render_as_string(hide_password=False)
app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_pre_ping": True}
db = SQLAlchemy(app)
migrate = Migrate(app, db)


class Entry(db.Model):
    __tablename__ = "entries"
    id = db.Column(db.Integer, primary_key=True)
    label = db.Column(db.String(100), nullable=False)
    note = db.Column(db.Text, nullable=False)
    created_at = db.Column(db.DateTime, nullable=False, server_default=db.func.now())


@app.get("/")
def entries():
    rows = db.session.execute(db.select(Entry).order_by(Entry.id)).scalars().all()
    return render_template("index.html", entries=rows)


@app.post("/entries")
def add_entry():
    db.session.add(Entry(label=request.form["label"], note=request.form["note"]))
    db.session.commit()
    return redirect("/", code=303)


@app.get("/status")
def status():
    count = db.session.execute(text("SELECT count(*) FROM entries")).scalar_one()
    return {"entries": count}
