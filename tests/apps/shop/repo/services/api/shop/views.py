import hmac

from flask import Blueprint, abort, current_app, redirect, render_template, request
from sqlalchemy import text

from . import db
from .models import Product

bp = Blueprint("shop", __name__)


@bp.get("/")
def catalogue():
    products = db.session.execute(db.select(Product).order_by(Product.id)).scalars().all()
    return render_template("index.html", products=products)


@bp.post("/products")
def add_product():
    db.session.add(Product(name=request.form["name"], price_cents=int(request.form["price_cents"])))
    db.session.commit()
    return redirect("/", code=303)


@bp.get("/internal/health")
def health():
    """204 when the database answers; only for callers holding the health token."""
    token = current_app.config["HEALTH_TOKEN"]
    if not token or not hmac.compare_digest(request.headers.get("X-Health-Token", ""), token):
        abort(403)
    db.session.execute(text("SELECT 1 FROM products LIMIT 1"))
    return "", 204
