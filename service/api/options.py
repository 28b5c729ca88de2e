"""The options a request gives beside its images, parsed once at the edge into their types:
``OutputOptions`` (format, quality, size; the codec's type, as the jobs runner encodes in it
too) and ``Scheduling`` (priority, timeout). Each comes from query parameters or body fields
(body fields win); scheduling also from headers, which a proxy or gateway can set."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, ValidationError

from ..codec.output import OutputOptions
from ..queue.priority import Priority
from .errors import ApiError

OPTION_FIELDS = ("format", "quality", "size", "priority", "timeout")
# Scheduling options may also come as headers (a proxy or gateway can set them); fields win.
SCHEDULING_HEADERS = {"priority": "X-Priority", "timeout": "X-Request-Timeout"}
# The shortest timeout accepted, in seconds (stated in the OpenAPI schema as its minimum): a
# request's own decoding and one forward take longer, so a shorter one could never be met.
MIN_TIMEOUT_S = 0.01


class Scheduling(BaseModel):
    """How the request is scheduled: its priority (the route's default when absent) and a
    deadline shorter than TRYON_REQUEST_TIMEOUT_S, in seconds."""
    priority: Priority | None = None
    timeout: float | None = Field(None, ge=MIN_TIMEOUT_S, allow_inf_nan=False)


def validated(model: type[BaseModel], values: Any, field_names: dict[str, str] | None = None, status: int = 422,
              code: str = "invalid_option"):
    """``values`` as ``model``, or the ApiError naming the first field at fault (``field_names``: the
    name a client sent it under, where that is not the field's own)."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ApiError(status, code, first["msg"], (field_names or {}).get(where, where) or None) from None


def parse_options(values: dict, typed: bool = False) -> OutputOptions:
    """``typed``: JSON values, where ``true`` or ``"5"`` is no quality (multipart and query
    values are text, converted); 47.0 is, as JSON Schema's integers include it."""
    quality = values.get("quality")
    if typed and quality is not None and (isinstance(quality, bool) or not isinstance(quality, (int, float))):
        raise ApiError(422, "invalid_option", "must be a JSON integer from 1 to 100", "quality")
    return validated(OutputOptions, {k: v for k, v in values.items() if k in OutputOptions.model_fields})


def parse_scheduling(values: dict, headers) -> Scheduling:
    """Scheduling from fields (``values``: body or query) or else headers; an error names
    the field or header it came from."""
    from_headers = {k: headers[h] for k, h in SCHEDULING_HEADERS.items() if h in headers and values.get(k) is None}
    given = {k: v for k, v in values.items() if k in Scheduling.model_fields and v is not None} | from_headers
    return validated(Scheduling, given, {k: SCHEDULING_HEADERS[k] for k in from_headers})
