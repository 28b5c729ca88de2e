"""The OpenAPI document as the contract a generated client can trust.

Pieces the routes put in their decorators: the one error body (a named
component, ``ErrorBody``), the statuses each kind of route can answer with
it, the real media types, and the request bodies of the person-side routes
as ``oneOf`` forms generated from model.person.PERSON_MIXES, the
table the service's mix check agrees with. ``install_openapi`` adds the
security schemes the API key dependency accepts.
"""
from __future__ import annotations

from typing import NamedTuple

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

from model.person import PERSON_MIXES

from ..codec.output import OutputOptions
from ..codec.sources import KEYPOINTS_FIELD
from .options import Scheduling
from .oip import InferRequest, InferResponse

BINARY = {"type": "string", "format": "binary"}
IMAGE_SCHEMA = {"type": "string", "description": "an image file, or an http(s) URL as a text field"}
JSON_IMAGE = {"type": "string", "description": "an http(s) URL, or the image's bytes as base64 (or a data: URL)"}
_KEYPOINTS = {"description": "body keypoints as JSON (OpenPose, a list of 18/25/17 (x, y, confidence) "
                             "points, or COCO): a text field or a file"}
# Empty keypoints ("", [], {}) hold no point: not schema-valid, as the service refuses them. As text they
# are the JSON of an object or a list, so the text starts with { or [ (after any white space).
_KEYPOINTS_TEXT = {"type": "string", "minLength": 2, "pattern": r"^\s*[\[{]"}
_FORM_FIELDS = {"multipart": {KEYPOINTS_FIELD: {**_KEYPOINTS, **_KEYPOINTS_TEXT}},
                "json": {KEYPOINTS_FIELD: {**_KEYPOINTS, "anyOf": [{"type": "object", "minProperties": 1},
                                                                   {"type": "array", "minItems": 1},
                                                                   _KEYPOINTS_TEXT]}}}
_IMAGE_FIELD = {"multipart": {**IMAGE_SCHEMA, **BINARY}, "json": JSON_IMAGE}


def _inlined(schema, definitions: dict):
    """``schema`` with its ``$ref``s to pydantic's ``$defs`` replaced by what they name (a body
    schema has no ``$defs`` of its own to point into)."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _inlined(definitions[schema["$ref"].rsplit("/", 1)[-1]], definitions)
        return {k: _inlined(v, definitions) for k, v in schema.items() if k != "title"}
    if isinstance(schema, list):
        return [_inlined(item, definitions) for item in schema]
    return schema


def _options() -> dict:
    """The output and scheduling options' properties, from the models that validate them."""
    properties = {}
    for model in (OutputOptions, Scheduling):
        schema = model.model_json_schema()
        properties |= _inlined(schema["properties"], schema.get("$defs", {}))
    return {name: _not_null(prop) for name, prop in properties.items()}


def _not_null(prop: dict) -> dict:
    """An optional field (``X | None = None``) as what a client sends: leaving it out is the None."""
    branches = [b for b in prop.get("anyOf", ()) if b != {"type": "null"}]
    if len(branches) != 1:
        return prop
    return {**branches[0], **{k: v for k, v in prop.items() if k not in ("anyOf", "default")}}


_NAME_ORDER = ("masked_model", "pose", "person", "keypoints", "parse")


class _Form(NamedTuple):
    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]


def _ordered(names) -> tuple[str, ...]:
    return tuple(sorted(names, key=_NAME_ORDER.index))


PERSON_FORMS = [_Form(" + ".join(_ordered(mix.required)), _ordered(mix.required), _ordered(mix.optional))
                for mix in PERSON_MIXES]
PERSON_MIX = ("Person side: exactly one of these forms (the request body's `oneOf`): "
              + "; ".join(f"{' + '.join(_ordered(mix.required))}"
                          + "".join(f" (+ {name})" for name in _ordered(mix.optional)) + f": {mix.summary}"
                          for mix in PERSON_MIXES)
              + ". A person photo alone has its keypoints detected on the server (`X-Person-Count`; 422 "
                "`no_person`, `missing_body_points`, `person_too_small`)"
              + ". Any other mix is a 422 (`incomplete_inputs` or `ambiguous_inputs`) whose `field` lists the "
                "inputs concerned. A field given twice is a 422 `duplicate_field`.")


PERSON_INPUTS = tuple(dict.fromkeys(name for form in PERSON_FORMS for name in (*form.required, *form.optional)))


def person_request_body(garments: dict, options: bool = True, extra: dict | None = None,
                        garments_required: bool = True) -> dict:
    """The request body of an endpoint taking the person-side inputs plus ``garments``
    ({"multipart": {...}, "json": {...}} properties, all required unless not ``garments_required``),
    the output options and ``extra`` (properties of both forms, optional).
    ``oneOf`` the forms, each naming the person-side inputs it takes and no others; every
    field is also a property of the body itself, so that a file part is known as one."""
    def schema(kind: str) -> dict:
        fields = {name: _FORM_FIELDS[kind].get(name, _IMAGE_FIELD[kind]) for name in PERSON_INPUTS}
        common = {**garments.get(kind, {}), **(_options() if options else {}), **(extra or {})}
        required = list(garments.get(kind, {})) if garments_required else []
        forms = [{"title": form.name, "type": "object", "required": [*form.required, *required],
                  "properties": {**{name: fields[name] for name in (*form.required, *form.optional)}, **common},
                  "additionalProperties": False} for form in PERSON_FORMS]
        return {"type": "object", "properties": {**fields, **common}, "oneOf": forms}
    return {"required": True, "content": {media: {"schema": schema(kind)} for media, kind in
                                          (("multipart/form-data", "multipart"), ("application/json", "json"))}}


# /v1/tryon/batch and /v1/jobs: the person side and many garments; a job also takes its webhook_url.
_GARMENTS = {"multipart": {"cloth": {"type": "array", "items": {**IMAGE_SCHEMA, **BINARY}, "minItems": 1,
                                     "description": "repeat the field, once per garment (at most TRYON_MAX_GARMENTS; "
                                                    "TRYON_JOBS_MAX_GARMENTS for a job)"}},
             "json": {"cloths": {"type": "array", "items": JSON_IMAGE, "minItems": 1,
                                 "description": "at most TRYON_MAX_GARMENTS (TRYON_JOBS_MAX_GARMENTS for a job)"}}}
GARMENTS_REQUEST_BODY = person_request_body(_GARMENTS)
JOBS_REQUEST_BODY = person_request_body(_GARMENTS, extra={"webhook_url": {
    "type": "string", "minLength": 1, "description": "an http(s) URL to POST the job's end to, signed per "
                                                     "Standard Webhooks"}})


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable, e.g. not_an_image, queue_full")
    message: str = Field(description="what went wrong and what to do")
    field: str | None = Field(description="the input at fault (several: comma-separated), or null")


class ErrorBody(BaseModel):
    """Every answer other than success has this body."""
    error: ErrorDetail


RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
_ERRORS = {
    400: "`invalid_json` (the body), `bad_multipart`, `url_not_allowed` (a URL to a non-public address)",
    401: "`unauthorized`: a valid API key is required (when the server has TRYON_API_KEYS)",
    404: "`job_not_found` (also another API key's job), `result_not_ready`, `result_failed`, `result_not_found`",
    408: "`body_timeout`: the request body did not arrive within TRYON_REQUEST_TIMEOUT_S",
    413: "`payload_too_large` (the body), `image_too_large` (bytes, pixels, or more to decode than "
         "TRYON_MAX_BYTES_IN_FLIGHT), `too_many_garments`, `json_too_large`, `job_too_large` (more bytes than "
         "TRYON_JOBS_MEMORY_BYTES)",
    410: "`job_expired`, `result_deleted` (after TRYON_JOBS_RETENTION_S)",
    415: "`unsupported_media_type` (send multipart/form-data or application/json), `not_an_image`",
    422: "`incomplete_inputs`, `ambiguous_inputs`, `missing_field`, `duplicate_field`, `invalid_field`, "
         "`invalid_base64`, `invalid_url`, `invalid_keypoints`, `invalid_<image>`, `invalid_option`, "
         "`invalid_request` (a query parameter or path), `json_too_deep`, `webhooks_not_configured`, "
         "`output_too_large` (size=original past what the format holds a side), `idempotency_key_reused`, "
         "`timeout_too_short` (shorter than one forward here: it can never be met)",
    500: "`inference_failed`: the model failed on this batch",
    502: "`upstream_unreachable`, `upstream_error`: a URL input could not be fetched",
    503: "`queue_full`, `overloaded`, `busy` (the bytes in flight, TRYON_MAX_BYTES_IN_FLIGHT, or the URL fetches, "
         "TRYON_URL_MAX_FETCHES, of this process), `not_ready`, `shutting_down`, `out_of_memory`, `jobs_unavailable` (the job "
         "store did not answer), `jobs_full`: retry after Retry-After. `jobs_unavailable` without Retry-After: "
         "this deployment serves no jobs (TRYON_WORKERS > 1 without TRYON_JOBS_URL); retrying will not help. "
         "Without Retry-After too, a part this replica failed to load (/readyz's components): "
         "`person_detector_unavailable` (a photo sent without its masked model and pose map), "
         "`weights_unavailable` (every try-on)",
    504: "`deadline_exceeded` (not served in time), `upstream_timeout` (a URL input)",
}


def error_responses(*statuses: int) -> dict:
    """``responses=`` of a route: each status with the error body (and Retry-After on 503)."""
    return {status: {"model": ErrorBody, "description": _ERRORS[status],
                     **({"headers": RETRY_AFTER} if status == 503 else {}),
                     **({"headers": {"WWW-Authenticate": {"schema": {"type": "string"}}}} if status == 401 else {})}
            for status in statuses}


# Every person-side route reads a body, may fetch URLs and needs the model loaded.
INPUT_ERRORS = (400, 401, 408, 413, 415, 422, 502, 503, 504)
MODEL_ERRORS = (*INPUT_ERRORS, 500)  # the routes that run the network


def binary_content(*media_types: str) -> dict:
    return {media: {"schema": BINARY} for media in media_types}


# The protocol's infer documents: the route reads its body itself (JSON, or the binary extension),
# so FastAPI does not see them; INFER_OPENAPI (routes/v2.py) refers to them here.
PROTOCOL_SCHEMAS = (InferRequest, InferResponse)
REF_TEMPLATE = "#/components/schemas/{model}"


def install_openapi(app: FastAPI, api_keys: bool) -> None:
    """The generated document. The routes that check API keys say so themselves (their dependency,
    deps.require_api_key, declares the Bearer and X-API-Key schemes, whatever router or tag they
    are in); without ``api_keys`` (TRYON_API_KEYS unset) nothing is checked, and the document says
    that too."""
    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in PROTOCOL_SCHEMAS:
                document = model.model_json_schema(ref_template=REF_TEMPLATE)
                components |= document.pop("$defs", {})
                components[model.__name__] = document
            if not api_keys:
                schema["components"].pop("securitySchemes", None)
                for operation in (op for path in schema["paths"].values() for op in path.values()):
                    operation.pop("security", None)
            app.openapi_schema = schema
        return app.openapi_schema
    app.openapi = openapi
