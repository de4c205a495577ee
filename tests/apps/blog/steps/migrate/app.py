"""Field notes: posts in PostgreSQL, one module, `app` at module level (FLASK_APP=app.py)."""

import os

from flask import Flask, redirect, render_template, request, url_for
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import text
from sqlalchemy.engine import URL

app = Flask(__name__)
# The ops team hands out the database settings one by one; the URL is built here.
app.config["SQLALCHEMY_DATABASE_URI"] = URL.create(
    "postgresql+psycopg2",
    username=os.environ["DB_USER"],
    password=os.environ["DB_PASSWORD"],
    host=os.environ.get("DB_HOST", "localhost"),
    port=int(os.environ.get("DB_PORT", "5432")),
    database=os.environ["DB_NAME"],
).render_as_string(hide_password=False)
app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_pre_ping": True}
db = SQLAlchemy(app)
migrate = Migrate(app, db)


class Post(db.Model):
    __tablename__ = "posts"
    id = db.Column(db.Integer, primary_key=True)
    title = db.Column(db.String(200), nullable=False)
    body = db.Column(db.Text, nullable=False)
    published = db.Column(db.DateTime, nullable=False, server_default=db.func.now())
    tags = db.Column(db.String(200))


@app.get("/")
def index():
    posts = db.session.execute(db.select(Post).order_by(Post.id)).scalars().all()
    return render_template("index.html", posts=posts)


@app.post("/posts")
def create_post():
    db.session.add(Post(title=request.form["title"], body=request.form["body"], tags=request.form.get("tags") or None))
    db.session.commit()
    return redirect(url_for("index"), code=303)


@app.get("/health")
def health():
    db.session.execute(text("SELECT 1"))
    return {"status": "ok"}
