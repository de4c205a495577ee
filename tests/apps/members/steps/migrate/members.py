"""Members: a session login in front of every page that reads the database."""

import functools
import hmac
import os

import click
from flask import Flask, redirect, render_template, request, session, url_for
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["SQLALCHEMY_DATABASE_URI"]
app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_pre_ping": True}
app.secret_key = os.environ["SECRET_KEY"]
db = SQLAlchemy(app)
migrate = Migrate(app, db)


class Member(db.Model):
    __tablename__ = "members"
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(120), nullable=False)
    email = db.Column(db.String(255), nullable=False, unique=True)
    joined = db.Column(db.Date, nullable=False, server_default=db.func.current_date())
    role = db.Column(db.String(20), nullable=False, server_default="member")


def login_required(view):
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        if session.get("user") != "admin":
            return redirect(url_for("login", next=request.path))
        return view(*args, **kwargs)

    return wrapped


@app.route("/login", methods=["GET", "POST"])
def login():
    error = None
    if request.method == "POST":
        password = request.form.get("password", "")
        if request.form.get("username") == "admin" and hmac.compare_digest(password, os.environ["ADMIN_PASSWORD"]):
            session["user"] = "admin"
            return redirect(request.args.get("next") or url_for("index"), code=303)
        error = "wrong user name or password"
    return render_template("login.html", error=error)


@app.get("/")
@login_required
def index():
    members = db.session.execute(db.select(Member).order_by(Member.id)).scalars().all()
    return render_template("index.html", members=members)


@app.post("/members")
@login_required
def add_member():
    db.session.add(Member(name=request.form["name"], email=request.form["email"]))
    db.session.commit()
    return redirect(url_for("index"), code=303)


@app.cli.command("check-db")
def check_db():
    """Read the members through the models: fails when code and schema disagree."""
    members = db.session.execute(db.select(Member)).scalars().all()
    click.echo(f"{len(members)} members")
