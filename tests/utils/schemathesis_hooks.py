"""Schemathesis hooks for tests/service/api/test_openapi.py (loaded through SCHEMATHESIS_HOOKS).

Three checks are narrowed, each only where the schema cannot say more.

``positive_data_acceptance``:
``positive_data_acceptance`` expects every schema-valid request to succeed, but
a schema types an image as bytes and keypoints as JSON, not as pixels Pillow can
read or points inside the photo, and it cannot say what a URL will serve. So a
schema-valid request refused *for its content* is accepted here, by the error
codes that mean exactly that; any other refusal of a schema-valid request (an
ambiguous mix, a missing field, a bad option) still fails the run.

``not_a_server_error``: a 503 or 504 that says the request could not be served in
its time (``overloaded``, ``deadline_exceeded``: a ``timeout`` at the schema's minimum,
MIN_TIMEOUT_S, is valid and on a loaded CPU shorter than one forward) or the server's
load (``queue_full``) is the documented answer, not a server error. Any other 5xx still
fails the run.

The Open Inference Protocol's infer (/v2) reads its tensors itself: its schema says each
input is ``UINT8`` with four dimensions, but not that ``data`` holds N x H x W x 3 values
(a product of the shape), that H x W is the deployment's TRYON_IMAGE_SIZE, that the three
inputs share N, nor which model names a server holds; so a schema-valid request refused
for those reasons (the codes below) is accepted too. Its error body is a string,
``"<code>: <message>"``.

``negative_data_rejection``: a multipart file part is bytes on the wire, whatever
value the generator drew for a ``format: binary`` property, so a request whose
only "violation" is that ``format`` is a valid upload (it is sent as an image
file) and its 200 is right. Any other violation accepted still fails the run.
"""
from __future__ import annotations

import json
import re

import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

CONTENT_CODES = {
    "not_an_image",  # bytes that are no image: "format: binary" says bytes, not pixels
    "image_too_large",  # pixels over TRYON_MAX_IMAGE_PIXELS: a header inside the bytes
    "invalid_keypoints",  # JSON text of points in the photo's frame: beyond a string schema
    "invalid_base64",  # a JSON image is an http(s) URL or base64; a string schema takes both
    "invalid_url", "url_not_allowed", "upstream_unreachable", "upstream_error", "upstream_timeout",  # what a URL serves
    "invalid_parse", "invalid_person", "invalid_masked_model", "invalid_pose", "invalid_cloth",  # pixels' meaning
    "too_many_garments",  # TRYON_MAX_GARMENTS is the deployment's setting, not the schema's
    "webhooks_not_configured",  # whether this deployment signs webhooks (TRYON_WEBHOOK_SECRET) is its setting
    "idempotency_key_reused",  # a key the server saw before with another request: its memory, not the schema
    "no_person", "missing_body_points", "person_too_small",  # what the person photo shows
    "no_keypoints",  # ?output=keypoints of a person given as images: nothing was detected to return
    "no_mask", "no_cloth",  # ?output=mask without a photo, ?output=cloth without a cloth: nothing to return
    "overloaded", "queue_full",  # the server's load at that moment, not the request
    "timeout_too_short",  # a timeout under one forward here: the deployment's speed, not the schema's
    "bulk_only",  # /v1/jobs runs as bulk work: the options schema it shares with /v1/tryon lists interactive too
    # /v2 infer: a tensor's values against its shape, the model's size and the other inputs
    "invalid_shape", "invalid_byte_size", "invalid_tensor", "unknown_input", "duplicate_input",
    "unknown_output", "unsupported_parameter", "invalid_parameter", "invalid_header_length",
    "unknown_model", "unknown_model_version",  # which models a server holds is its state, not its schema
}


def _error_code(response) -> str | None:
    try:
        error = json.loads(response.content)["error"]
        return error.partition(":")[0] if isinstance(error, str) else error["code"]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


@schemathesis.check
def positive_data_accepted_but_for_content(ctx, response, case):
    try:
        return positive_data_acceptance(ctx, response, case)
    except AssertionError:
        if _error_code(response) in CONTENT_CODES:
            return None
        raise


LOAD_CODES = {"overloaded", "queue_full", "deadline_exceeded"}


@schemathesis.check
def no_server_error_but_for_load(ctx, response, case):
    try:
        return not_a_server_error(ctx, response, case)
    except AssertionError:
        if response.status_code in (503, 504) and _error_code(response) in LOAD_CODES:
            return None
        raise


@schemathesis.check
def negative_data_rejected_but_for_file_parts(ctx, response, case):
    try:
        return negative_data_rejection(ctx, response, case)
    except AssertionError as failure:
        violated = re.findall(r"violates `([^`]+)`", getattr(failure, "message", str(failure)))
        multipart = (case.media_type or "").startswith("multipart/form-data")
        if multipart and violated and set(violated) == {"format"}:
            return None
        raise
