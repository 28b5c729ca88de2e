"""The one error both entry points answer with: a status, a code, a message, the field at fault.

The HTTP edge (service/api/errors.py) turns it into a response; the jobs (service/jobs/)
keep it in a job's record. Either way the same input gives the same code.
"""
from __future__ import annotations


class ApiError(Exception):
    """An answer other than success; ``field`` names the input at fault, if one is."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}
