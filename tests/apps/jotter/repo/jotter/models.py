from . import db


class Note(db.Model):
    __tablename__ = "notes"
    id = db.Column(db.Integer, primary_key=True)
    text = db.Column(db.Text, nullable=False)
    starred = db.Column(db.Boolean, nullable=False, server_default=db.false())
