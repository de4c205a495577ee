"""Database tables of the recipes app (the schema the migrations in ../migrations build)."""

from __future__ import annotations

from . import db


class User(db.Model):
    """Somebody who writes recipes."""

    __tablename__ = "users"

    id = db.Column(db.Integer, primary_key=True)
    email = db.Column(db.String(255), unique=True, nullable=False)
    name = db.Column(db.String(120), nullable=False)

    recipes = db.relationship("Recipe", back_populates="user")

    def __repr__(self) -> str:
        return f"<User {self.email}>"


class Recipe(db.Model):
    """A recipe; `inspiration` arrived with the third migration."""

    __tablename__ = "recipes"

    id = db.Column(db.Integer, primary_key=True)
    recipe_title = db.Column(db.String, nullable=False)
    recipe_description = db.Column(db.String, nullable=False)
    is_public = db.Column(db.Boolean, nullable=False, default=False)
    inspiration = db.Column(db.String, default=None, nullable=True)
    user_id = db.Column(db.Integer, db.ForeignKey("users.id"))

    user = db.relationship("User", back_populates="recipes")

    def __repr__(self) -> str:
        return f"<Recipe {self.recipe_title!r}>"
