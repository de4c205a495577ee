"""Guestbook: entries in MariaDB through PyMySQL, one module, `app` at module level."""

import os

from flask import Flask, redirect, render_template, request, url_for
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import text
from sqlalchemy.engine import URL


def _password() -> str:
    with open(os.environ["DB_PASSWORD_FILE"], encoding="utf-8") as handle:
        return handle.read().strip()


app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = URL.create(
    "mysql+pymysql",
    username=os.environ["DB_USER"],
    password=_password(),
    host=os.environ.get("DB_HOST", "localhost"),
    port=int(os.environ.get("DB_PORT", "3306")),
    database=os.environ["DB_NAME"],
    query={"charset": "utf8mb4"},
).render_as_string(hide_password=False)
app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_pre_ping": True, "pool_recycle": 3600}
db = SQLAlchemy(app)
migrate = Migrate(app, db)


class Entry(db.Model):
    __tablename__ = "entries"
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(80), nullable=False)
    message = db.Column(db.Text, nullable=False)
    created_at = db.Column(db.DateTime, nullable=False, server_default=db.func.now())


@app.get("/")
def index():
    entries = db.session.execute(db.select(Entry).order_by(Entry.id)).scalars().all()
    return render_template("index.html", entries=entries)


@app.post("/entries")
def sign():
    db.session.add(Entry(name=request.form["name"], message=request.form["message"]))
    db.session.commit()
    return redirect(url_for("index"), code=303)


@app.get("/health")
def health():
    db.session.execute(text("SELECT 1 FROM entries LIMIT 1"))
    return {"status": "ok"}
