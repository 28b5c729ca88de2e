"""POST /v1/prepare: what the model will see for a person, without running it."""
from __future__ import annotations

import asyncio
import base64
import time
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse

from model.images import encode_image
from model.person import openpose_json

from ..deps import ServiceDep, require_api_key, require_ready
from ..errors import ApiError
from ..openapi import INPUT_ERRORS, PERSON_MIX, binary_content, error_responses, person_request_body
from ..parts import MultipartMixed, Part, accepts
from ...codec.person import decode_person, detection_report
from ..steps import read_parts, server_timing

PrepareOutput = Literal["masked_model", "pose", "keypoints"]
PNG = "image/png"

prepare = APIRouter(tags=["try-on"], dependencies=[Depends(require_api_key)])

PREPARE_OPENAPI = {
    "requestBody": person_request_body({}, options=False),
    "responses": {"200": {"description": "with ?output=masked_model or pose: that image as PNG; with "
                                         "?output=keypoints: OpenPose JSON (`people[0].pose_keypoints_2d`, COCO-18, "
                                         "the photo's pixels); without: both images, as multipart/mixed "
                                         "(default) or JSON with base64 (Accept: application/json)",
                          "content": binary_content(PNG, "multipart/mixed") | {
                              "application/json": {"schema": {"oneOf": [
                                  {"type": "object", "required": ["size", "media_type"],
                                   "properties": {"size": {"type": "array"}, "media_type": {"type": "string"},
                                                  "masked_model": {"type": "string"}, "pose": {"type": "string"}}},
                                  {"type": "object", "required": ["people"], "description": "?output=keypoints",
                                   "properties": {"version": {"type": "number"}, "people": {"type": "array"}}},
                              ]}}}}},
}


@prepare.post("/v1/prepare", summary="The masked model and pose map the model will see, as PNG at its size",
              description=PERSON_MIX, response_class=Response, openapi_extra=PREPARE_OPENAPI,
              responses=error_responses(*INPUT_ERRORS))
async def prepare_person(
        request: Request,
        service: ServiceDep,
        output: PrepareOutput | None = Query(None, description="one image only, as image/png, or the keypoints "
                                                               "used (detected or sent) as OpenPose JSON"),
) -> Response:
    require_ready(service)
    settings = service.settings
    mark = time.perf_counter()
    parts, _ = await read_parts(request, service, None, "none", {})
    person = await asyncio.to_thread(decode_person, parts, settings)
    timings: dict[str, float] = {}
    person_headers = detection_report(person, timings, service.metrics)
    height, width = settings.image_hw
    if output == "keypoints":
        if person.keypoints is None:
            raise ApiError(422, "no_keypoints", "masked_model and pose were given: there are no keypoints to "
                           "return; send the person photo", "output")
        timings["prepare"] = (time.perf_counter() - mark) * 1000
        return JSONResponse(openpose_json(person.keypoints), headers={
            "Server-Timing": server_timing(timings), **person_headers})
    names = (output,) if output else ("masked_model", "pose")
    images = await asyncio.to_thread(lambda: {name: encode_image(getattr(person, name), "png") for name in names})
    timings["prepare"] = (time.perf_counter() - mark) * 1000
    headers = {"Server-Timing": server_timing(timings), "X-Image-Size": f"{height}x{width}", **person_headers}
    if output:
        return Response(images[output], media_type=PNG, headers=headers | {
            "Content-Disposition": f'inline; filename="{output}.png"'})
    if accepts(request, "application/json"):
        return JSONResponse({"size": [height, width], "media_type": PNG,
                             **{name: base64.b64encode(body).decode("ascii") for name, body in images.items()}},
                            headers=headers)
    framing = MultipartMixed()
    body = b"".join(framing.part(Part(name, PNG, data)) for name, data in images.items()) + framing.end()
    return Response(body, media_type=framing.media_type, headers=headers)
