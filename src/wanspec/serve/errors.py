"""Errors the HTTP API answers with, in the OpenAI (and vLLM) error body.

vLLM answers ``{"error": {"message", "type", "param", "code"}}`` with ``code`` the HTTP status;
clients (the official ``openai`` package among them) read ``error.message`` from it.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any


class APIError(Exception):
    """A request the API refuses: its status, a message for the client, the offending field."""

    def __init__(self, message: str, *, status: int = 400, type: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type or _default_type(status)
        self.param = param

    def body(self) -> dict[str, Any]:
        return error_body(self.message, status=self.status, type=self.type, param=self.param)


def _default_type(status: int) -> str:
    """vLLM's error types: the status phrase in CamelCase plus ``Error`` (``BadRequestError``),
    without doubling a phrase that already ends in it (500: ``InternalServerError``)."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "Error"
    name = "".join(w.capitalize() for w in phrase.replace("-", " ").split())
    return name if name.endswith("Error") else name + "Error"


def error_body(message: str, *, status: int, type: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type or _default_type(status), "param": param,
                      "code": status}}
