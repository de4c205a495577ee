"""Reading what ``deployer … --json`` prints: one envelope for every command,
``{"schema", "ok", "result" | "error", "exit_code"}``."""

from __future__ import annotations

import json
from typing import Any

ENVELOPE_SCHEMA = 1


def envelope(stdout: str) -> dict[str, Any]:
    """The envelope printed on stdout, checked for its shape."""
    doc = json.loads(stdout)
    assert isinstance(doc, dict) and doc.get("schema") == ENVELOPE_SCHEMA, doc
    assert isinstance(doc.get("ok"), bool) and isinstance(doc.get("exit_code"), int), doc
    assert "result" in doc or "error" in doc, doc
    assert doc["ok"] == (doc["exit_code"] == 0 and "error" not in doc), doc
    if "error" in doc:
        assert set(doc["error"]) == {"message", "hint", "kind"} and doc["error"]["message"], doc
    return doc


def result(stdout: str) -> Any:
    """The command's result (it must have one)."""
    doc = envelope(stdout)
    assert "result" in doc, doc
    return doc["result"]


def result_or_envelope(stdout: str) -> dict[str, Any]:
    """The result when there is one (a status report, whatever its exit), else the error envelope."""
    doc = envelope(stdout)
    return doc.get("result", doc)
