"""From an HTTP request to model inputs: the three images and the output options.

Each image (masked_model, pose, cloth) comes as a multipart file, as a
multipart text field or JSON string holding an http(s) URL, or as a JSON
base64 string (a ``data:`` URL is fine). Options (format, quality, size)
come from query parameters or body fields. Limits: the request body, bytes
per image (413), pixels announced by the header (413, before decoding),
and anything Pillow can't read (415). URLs are fetched concurrently;
decoding and letterboxing run in a thread, one request at a time, so one
bad input fails only its own request.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
from typing import Literal

from fastapi import Request
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from model.images import ImageError, ImageTooLarge, TryOnInputs, prepare_inputs

from .errors import ApiError
from .fetch import UrlFetcher
from .settings import Settings

IMAGE_FIELDS = ("masked_model", "pose", "cloth")
OPTION_FIELDS = ("format", "quality", "size")


OutputFormat = Literal["jpeg", "png", "webp"]
OutputSize = Literal["model", "original"]


class OutputOptions(BaseModel):
    format: OutputFormat = "jpeg"
    quality: int = Field(90, ge=1, le=100)
    size: OutputSize = "model"


def parse_options(values: dict) -> OutputOptions:
    try:
        return OutputOptions.model_validate({k: v for k, v in values.items() if k in OPTION_FIELDS})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ApiError(422, "invalid_option", first["msg"], ".".join(str(p) for p in first["loc"])) from None


def _is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"the request body is {declared} bytes, over the limit of {limit}")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError(413, "payload_too_large", f"the request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_size(data: bytes, field: str, limit: int) -> bytes:
    if len(data) > limit:
        raise ApiError(413, "image_too_large", f"{len(data)} bytes, over the limit of {limit} per image", field)
    return data


async def _from_multipart(request: Request, body: bytes, settings: Settings) -> tuple[dict, dict]:
    async def replay():
        yield body

    try:
        form = await MultiPartParser(request.headers, replay(), max_files=len(IMAGE_FIELDS),
                                     max_fields=len(IMAGE_FIELDS) + len(OPTION_FIELDS),
                                     max_part_size=65_536).parse()
    except MultiPartException as exc:
        raise ApiError(400, "bad_multipart", f"malformed multipart body ({exc.message})") from None
    sources, options = {}, {}
    try:
        for key, value in form.multi_items():
            if key in IMAGE_FIELDS:
                if isinstance(value, UploadFile):
                    sources[key] = _check_size(await value.read(), key, settings.max_upload_bytes)
                elif _is_url(value.strip()):
                    sources[key] = value.strip()
                else:
                    raise ApiError(422, "invalid_field", "a text field must hold an http(s) URL; send the image "
                                   "itself as a file part", key)
            elif key in OPTION_FIELDS and isinstance(value, str):
                options[key] = value
    finally:
        await form.close()
    return sources, options


def _from_json(body: bytes, settings: Settings) -> tuple[dict, dict]:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise ApiError(422, "invalid_json", "the JSON body must be an object")
    sources = {}
    for key in IMAGE_FIELDS:
        value = document.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ApiError(422, "invalid_field", "must be a string: an http(s) URL or base64 image bytes", key)
        value = value.strip()
        if _is_url(value):
            sources[key] = value
            continue
        if value.startswith("data:"):
            value = value.partition(",")[2]
        elif "://" in value[:16]:
            raise ApiError(422, "invalid_url", "only http and https URLs are fetched", key)
        if len(value) > settings.max_upload_bytes * 4 // 3 + 4:
            raise ApiError(413, "image_too_large", f"over the limit of {settings.max_upload_bytes} bytes per image",
                           key)
        try:
            sources[key] = _check_size(base64.b64decode(value, validate=True), key, settings.max_upload_bytes)
        except (binascii.Error, ValueError):
            raise ApiError(422, "invalid_base64", "neither an http(s) URL nor valid base64", key) from None
    return sources, {k: document[k] for k in OPTION_FIELDS if k in document}


async def read_tryon_request(request: Request, settings: Settings,
                             query_options: dict) -> tuple[dict[str, bytes | str], OutputOptions]:
    """The three image sources (bytes, or a URL still to fetch) and the options (body fields win)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("multipart/form-data", "application/json"):
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data or application/json, not "
                       f"{content_type or 'no Content-Type'!r}")
    body = await _read_body(request, settings.request_body_limit)
    if content_type == "multipart/form-data":
        sources, body_options = await _from_multipart(request, body, settings)
    else:
        sources, body_options = _from_json(body, settings)
    for key in IMAGE_FIELDS:
        if key not in sources:
            raise ApiError(422, "missing_field", f"{key} is required (a file, an http(s) URL or base64)", key)
    return sources, parse_options(query_options | body_options)


async def fetch_urls(sources: dict[str, bytes | str], fetcher: UrlFetcher) -> dict[str, bytes]:
    """Replaces every URL by its bytes, fetching them concurrently; the first failure is raised."""
    urls = {k: v for k, v in sources.items() if isinstance(v, str)}
    fetched = await asyncio.gather(*(fetcher.fetch(url, field) for field, url in urls.items()),
                                   return_exceptions=True)
    for outcome in fetched:
        if isinstance(outcome, BaseException):
            raise outcome
    return {**sources, **dict(zip(urls, fetched))}


def decode_inputs(images: dict[str, bytes], settings: Settings) -> TryOnInputs:
    """Decodes and letterboxes (call it in a thread): 413 for too many pixels, 415 for non-images."""
    try:
        return prepare_inputs(images["masked_model"], images["pose"], images["cloth"], size=settings.image_hw,
                              max_pixels=settings.max_image_pixels)
    except ImageTooLarge as exc:
        raise ApiError(413, "image_too_large", exc.message, exc.field) from None
    except ImageError as exc:
        raise ApiError(415, "not_an_image", exc.message, exc.field) from None
