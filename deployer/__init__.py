"""deployer: ship containerized Flask + SQLAlchemy apps to production safely."""

from __future__ import annotations

__version__ = "0.1.0"
