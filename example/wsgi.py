"""WSGI entry point: `gunicorn wsgi:app`, and FLASK_APP=wsgi.py for `flask db ...`."""

from __future__ import annotations

from recipes import create_app

app = create_app()
