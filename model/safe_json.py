"""JSON from outside (request bodies, keypoint fields and files), parsed within limits.

``json.loads`` recurses once per nesting level: 100,000 ``[`` end in a
RecursionError, and a digit string of 5,000 digits in a ValueError that is no
JSONDecodeError. Both are caught before or while parsing here and come out as
one JsonError whose ``code`` says which limit was passed. The limits look at
the JSON *outside* its strings, so a large base64 image inside a string costs
nothing but a regex scan: at most MAX_DEPTH levels of nesting and MAX_STRUCTURE
characters of structure (numbers, commas, brackets, keys' colons), which
bounds how many values a document can make. NaN and Infinity (not JSON, though
Python writes them) and a key given twice in one object are refused too.
"""
from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

MAX_DEPTH = 32  # OpenPose JSON inside a request body is 5 deep
MAX_STRUCTURE = 1 << 20  # characters outside strings: a BODY-25 OpenPose file has about 1,500
MAX_DIGITS = 64  # of one integer; Python refuses over 4,300 with an error a client can't act on

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string, escapes included (unrolled: no backtracking)


class JsonError(ValueError):
    """JSON refused; ``code`` is one of ``invalid_json``, ``json_too_deep``,
    ``json_too_large``, ``duplicate_key`` (then ``key`` names the key)."""

    def __init__(self, code: str, message: str, key: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.key = key


def _refuse_constant(name: str) -> float:
    raise JsonError("invalid_json", f"{name} is not a JSON number; send a finite number")


def _integer(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_DIGITS:
        raise JsonError("invalid_json", f"an integer of {len(digits.lstrip('-'))} digits; send at most {MAX_DIGITS}")
    return int(digits)


def _object(pairs: list[tuple[str, Any]]) -> dict:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise JsonError("duplicate_key", f"{key!r} is given twice in one object; send each key once", key)
    return document


def _check_structure(text: str, max_depth: int, max_structure: int) -> None:
    structure = _STRING.sub("", text)
    if len(structure) > max_structure:
        raise JsonError("json_too_large", f"{len(structure)} characters of JSON outside strings, over the limit of "
                                          f"{max_structure}; send fewer values")
    codes = np.frombuffer(structure.encode("ascii", "replace"), np.uint8)
    opened = np.cumsum((codes == ord("[")) | (codes == ord("{")), dtype=np.int64)
    closed = np.cumsum((codes == ord("]")) | (codes == ord("}")), dtype=np.int64)
    depth = int((opened - closed).max(initial=0))
    if depth > max_depth:
        raise JsonError("json_too_deep", f"nested {depth} levels deep, over the limit of {max_depth}; "
                                         "flatten the document")


def load_json(data: str | bytes, *, max_depth: int = MAX_DEPTH, max_structure: int = MAX_STRUCTURE) -> Any:
    """``data`` (text, or UTF-8 bytes; a BOM is harmless) as a Python value, or JsonError."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            data = bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise JsonError("invalid_json", f"not UTF-8 text (byte {exc.start}); send JSON as UTF-8") from None
    _check_structure(data, max_depth, max_structure)
    try:
        return json.loads(data, object_pairs_hook=_object, parse_constant=_refuse_constant, parse_int=_integer)
    except JsonError:
        raise
    except json.JSONDecodeError as exc:
        raise JsonError("invalid_json", f"not valid JSON ({exc})") from None
    except RecursionError:  # depth is checked above; this is the last line of defence
        raise JsonError("json_too_deep", "nested too deep; flatten the document") from None
