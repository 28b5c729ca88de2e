"""From an HTTP request to its parts (``RequestParts``) and its output options: fields parsed,
nothing fetched or decoded here.

Each image (masked_model, pose, person, parse, cloth) comes as a multipart
file, as a multipart text field or JSON string holding an http(s) URL, or
as a JSON base64 string (a ``data:`` URL is fine). Keypoints come as JSON:
a multipart file or text field, or a JSON field holding the object or list
itself or its text. Which person-side inputs make a valid mix is
model.person's rule (check_person_mix), checked here by name before any bytes are
decoded. Garments: one ``cloth`` (for /v1/prepare: at most one), or for the batch
endpoint ``cloth`` repeated (multipart) or a ``cloths`` list (JSON). Options (format, quality,
size, priority, timeout) come from query parameters or body fields (options.py). Limits here:
the request body (body.py: 413, 408), bytes per image (413), and a field that is unknown, given
twice or malformed (a 4xx naming it). A URL stays a URL: the codec fetches it
(service/codec/fetch.py ``fetch_parts``) and decodes the images (service/codec/person.py).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from model.person import IncompleteInputs, check_person_mix
from model.safe_json import MAX_STRUCTURE, JsonError, load_json

from .body import read_body
from .context import request_context
from .errors import ApiError
from .options import OPTION_FIELDS, parse_options
from ..codec.output import OutputOptions
from ..codec.sources import KEYPOINTS_FIELD, RequestParts, person_mix_error
from ..settings import Settings

PERSON_FIELDS = ("masked_model", "pose", "person", "parse")  # person-side images
Garments = Literal["none", "optional", "one", "many"]  # optional: at most one, no options


@dataclass(frozen=True)
class GarmentLimit:
    """Garments a request may carry (``setting`` names where the number comes from), its body's bytes,
    and the fields of that route beyond the usual ones (kept with the options)."""
    most: int
    setting: str
    body_bytes: int
    fields: tuple[str, ...] = ()

    @classmethod
    def batch(cls, settings: Settings) -> "GarmentLimit":
        return cls(settings.max_garments, "TRYON_MAX_GARMENTS", settings.batch_body_limit)


def _is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


def _check_size(data: bytes, field: str, limit: int) -> bytes:
    if len(data) > limit:
        raise ApiError(413, "image_too_large", f"{len(data)} bytes, over the limit of {limit} per image", field)
    return data


def _json_image(value: Any, key: str, settings: Settings) -> bytes | str:
    """A JSON image field: an http(s) URL (fetched later) or base64 bytes."""
    if not isinstance(value, str):
        raise ApiError(422, "invalid_field", "must be a string: an http(s) URL or base64 image bytes", key)
    value = value.strip()
    if _is_url(value):
        return value
    if value.startswith("data:"):
        value = value.partition(",")[2]
    elif "://" in value[:16]:
        raise ApiError(422, "invalid_url", "only http and https URLs are fetched", key)
    if len(value) > settings.max_upload_bytes * 4 // 3 + 4:
        raise ApiError(413, "image_too_large", f"over the limit of {settings.max_upload_bytes} bytes per image", key)
    try:
        return _check_size(base64.b64decode(value, validate=True), key, settings.max_upload_bytes)
    except (binascii.Error, ValueError):
        raise ApiError(422, "invalid_base64", "neither an http(s) URL nor valid base64", key) from None


_JSON_LIMIT_STATUS = {"json_too_deep": 422, "json_too_large": 413}


def read_json(data: str | bytes, field: str | None, max_structure: int = MAX_STRUCTURE) -> Any:
    """JSON from the client, parsed within model.safe_json's limits; ``field`` names the
    field it came in (None: the request body), and is named in the 4xx. ``max_structure``:
    a body whose values are the point (typed tensors) may hold more of them."""
    try:
        return load_json(data, max_structure=max_structure)
    except JsonError as exc:
        if exc.code == "duplicate_key":
            known = field or (exc.key if exc.key in (*PERSON_FIELDS, KEYPOINTS_FIELD, *OPTION_FIELDS, "cloth",
                                                     "cloths") else None)
            raise ApiError(422, "duplicate_field", exc.message, known) from None
        if exc.code in _JSON_LIMIT_STATUS:
            raise ApiError(_JSON_LIMIT_STATUS[exc.code], exc.code, exc.message, field) from None
        if field is None:
            raise ApiError(400, "invalid_json", f"the body is {exc.message}") from None
        raise ApiError(422, f"invalid_{field}", exc.message, field) from None


def _keypoints_json(value: str | bytes) -> Any:
    if isinstance(value, str) and _is_url(value.strip()):
        raise ApiError(422, "invalid_keypoints", "keypoints are taken as JSON (a field or a file), not as a URL",
                       KEYPOINTS_FIELD)
    return read_json(value, KEYPOINTS_FIELD)


def _check_known(key: str, garments: Garments, garment_key: str, extra: tuple[str, ...] = ()) -> None:
    """A field no route reads is refused, not ignored: a misspelt ``clothe`` would otherwise
    surface as a missing ``cloth``, and the OpenAPI forms allow no other fields."""
    known = (*PERSON_FIELDS, KEYPOINTS_FIELD, *((garment_key,) if garments != "none" else ()),
             *((*OPTION_FIELDS, *extra) if garments in ("one", "many") else ()))
    if key not in known:
        raise ApiError(422, "unknown_field", f"{key!r} is not a field of this endpoint; send only "
                       f"{', '.join(known)}", key[:64].encode("utf-8", "backslashreplace").decode())


def _garment(read, garments: Garments):
    """In a batch a garment's own failure is kept as its result; elsewhere it fails the request."""
    try:
        return read()
    except ApiError as exc:
        if garments != "many":
            raise
        return exc


def _multipart_image(value: UploadFile | str, data: bytes | None, key: str, settings: Settings) -> bytes | str:
    if isinstance(value, UploadFile):
        return _check_size(data, key, settings.max_upload_bytes)
    if _is_url(value.strip()):
        return value.strip()
    raise ApiError(422, "invalid_field", "a text field must hold an http(s) URL; send the image itself as a "
                   "file part", key)


async def _from_multipart(request: Request, body: bytes, settings: Settings, garments: Garments,
                          limit: GarmentLimit) -> RequestParts:
    async def replay():
        yield body

    cloth_parts = limit.most + 1 if garments == "many" else 1  # one over: counted, then refused
    most = len(PERSON_FIELDS) + 1 + cloth_parts
    try:
        form = await MultiPartParser(request.headers, replay(), max_files=most,
                                     max_fields=most + len(OPTION_FIELDS) + len(limit.fields),
                                     max_part_size=65_536).parse()
    except MultiPartException as exc:
        if garments == "many" and "Too many" in exc.message:
            _too_many(f"more than {limit.most}", limit)
        raise ApiError(400, "bad_multipart", f"malformed multipart body ({exc.message})") from None
    parts = RequestParts()
    seen: set[str] = set()
    try:
        for key, value in form.multi_items():
            if key in seen and not (key == "cloth" and garments == "many"):
                raise ApiError(422, "duplicate_field", f"{key} is given twice; send each field once", key)
            seen.add(key)
            _check_known(key, garments, "cloth", limit.fields)
            if key == KEYPOINTS_FIELD:
                parts.keypoints = _keypoints_json(await value.read() if isinstance(value, UploadFile) else value)
            elif key in PERSON_FIELDS or (key == "cloth" and garments != "none"):
                data = await value.read() if isinstance(value, UploadFile) else None
                source = _garment(lambda: _multipart_image(value, data, key, settings),
                                  garments if key == "cloth" else "one")
                if key != "cloth":
                    parts.person[key] = source
                elif garments != "many":
                    parts.cloths = [source]
                else:
                    parts.cloths.append(source)
            elif key in (*OPTION_FIELDS, *limit.fields) and isinstance(value, str):
                parts.options[key] = value
    finally:
        await form.close()
    return parts


def _from_json(body: bytes, settings: Settings, garments: Garments, limit: GarmentLimit) -> RequestParts:
    document = read_json(body, None)
    if not isinstance(document, dict):
        raise ApiError(422, "invalid_json", "the JSON body must be an object")
    for key in document:
        _check_known(key, garments, "cloths" if garments == "many" else "cloth", limit.fields)
        if document[key] is None and key in (*OPTION_FIELDS, *limit.fields):  # the schema's types have no null
            raise ApiError(422, "invalid_option", "must not be null: leave the field out for its default", key)
    parts = RequestParts(options={k: document[k] for k in (*OPTION_FIELDS, *limit.fields) if k in document})
    for key in PERSON_FIELDS:
        if document.get(key) is not None:
            parts.person[key] = _json_image(document[key], key, settings)
    keypoints = document.get(KEYPOINTS_FIELD)
    if keypoints is not None:
        parts.keypoints = _keypoints_json(keypoints) if isinstance(keypoints, str) else keypoints
    if garments in ("one", "optional") and document.get("cloth") is not None:
        parts.cloths = [_json_image(document["cloth"], "cloth", settings)]
    elif garments == "many" and document.get("cloths") is not None:
        if not isinstance(document["cloths"], list):
            raise ApiError(422, "invalid_field", "must be a list of garments (URLs or base64)", "cloths")
        if len(document["cloths"]) > limit.most:
            _too_many(len(document["cloths"]), limit)
        parts.cloths = [_garment(lambda i=i, value=value: _json_image(value, f"cloths[{i}]", settings), garments)
                        for i, value in enumerate(document["cloths"])]
    return parts


def _too_many(count: int | str, limit: GarmentLimit) -> None:
    raise ApiError(413, "too_many_garments", f"{count} garments; at most {limit.most} per "
                   f"request ({limit.setting})", "cloth")


async def read_request(request: Request, settings: Settings, query_options: dict, garments: Garments = "one",
                       limit: GarmentLimit | None = None) -> tuple[RequestParts, OutputOptions]:
    """The request's parts (person-side mix checked, garments counted) and its options (body fields win);
    ``limit``: the many garments' limit when not /v1/tryon/batch's."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("multipart/form-data", "application/json"):
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data or application/json, not "
                       f"{content_type or 'no Content-Type'!r}")
    limit = limit or GarmentLimit.batch(settings)
    body_limit = limit.body_bytes if garments == "many" else settings.request_body_limit
    body = await read_body(request, body_limit, settings.request_timeout_s)
    hold = request_context(request).hold
    if content_type == "multipart/form-data":  # each part read out of the parser: a copy of the body's images
        if hold is not None:
            hold.take(len(body), "parsing the multipart body")
        parts = await _from_multipart(request, body, settings, garments, limit)
    else:  # megabytes of base64: off the loop, its text and decoded bytes taken from the bytes in flight first
        if hold is not None:
            hold.take(2 * len(body), "parsing the JSON body")
        parts = await asyncio.to_thread(_from_json, body, settings, garments, limit)
    try:
        check_person_mix(parts.given)
    except IncompleteInputs as exc:
        raise person_mix_error(exc) from None
    if garments in ("one", "many") and not parts.cloths:
        what = "cloth is required (a file, an http(s) URL or base64)" if garments == "one" else \
            "at least one garment is required: cloth fields (multipart) or a cloths list (JSON)"
        raise ApiError(422, "missing_field", what, "cloth")
    if garments == "many" and len(parts.cloths) > limit.most:
        _too_many(len(parts.cloths), limit)
    return parts, parse_options(query_options | parts.options, typed=content_type == "application/json")
