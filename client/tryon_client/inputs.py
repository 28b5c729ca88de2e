"""The request's fields, built the same way for every call: images and keypoints as multipart parts.

An image is a path (``str`` or ``os.PathLike``), ``bytes``, a binary file object, or an http(s) URL
(sent as a text field: the service fetches it). Keypoints may also be a ``dict`` or ``list`` (sent as
JSON text). Everything is read into memory once, so a retried request sends the same bytes.
"""
from __future__ import annotations

import json
import mimetypes
import os
from typing import IO, Any, Dict, List, Optional, Tuple, Union

ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes]]
# One multipart part: (field name, (file name or None for a text field, content, content type or None)).
Part = Tuple[str, Tuple[Optional[str], Union[bytes, str], Optional[str]]]

PERSON_FIELDS = ("person", "keypoints", "parse", "masked_model", "pose")


def is_url(value: Any) -> bool:
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))


def part(field: str, value: Any) -> Part:
    """One input as a multipart part, in the order given (garment order is the answer's order)."""
    if field == "keypoints" and isinstance(value, (dict, list)):
        return field, (None, json.dumps(value), None)
    if is_url(value):
        return field, (None, value, None)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return field, (field, bytes(value), "application/octet-stream")
    if isinstance(value, (str, os.PathLike)):
        with open(value, "rb") as f:
            content = f.read()
        name = os.path.basename(os.fspath(value))
        return field, (name, content, mimetypes.guess_type(name)[0] or "application/octet-stream")
    if hasattr(value, "read"):
        content = value.read()
        if isinstance(content, str):
            raise TypeError(f"{field}: open the file in binary mode ('rb')")
        name = os.path.basename(str(getattr(value, "name", "") or field))
        return field, (name, content, mimetypes.guess_type(name)[0] or "application/octet-stream")
    raise TypeError(f"{field}: expected a path, bytes, a binary file object or an http(s) URL, "
                    f"got {type(value).__name__}")


def form(person: Dict[str, Any], garments: List[Any] = ()) -> List[Part]:
    """The person-side inputs that were given, then each garment as a ``cloth`` part."""
    unknown = set(person) - set(PERSON_FIELDS)
    if unknown:
        raise TypeError(f"unknown input(s) {', '.join(sorted(unknown))}; the inputs are "
                        f"{', '.join(PERSON_FIELDS)} and cloth")
    parts = [part(name, value) for name, value in person.items() if value is not None]
    return parts + [part("cloth", garment) for garment in garments]


def options(format: Optional[str], quality: Optional[int], size: Optional[str]) -> Dict[str, Any]:
    """The output options as query parameters, the ones given only."""
    return {k: v for k, v in (("format", format), ("quality", quality), ("size", size)) if v is not None}
