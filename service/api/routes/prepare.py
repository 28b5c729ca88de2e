"""POST /v1/prepare: what the model will see for a person (and a garment), without running it."""
from __future__ import annotations

import asyncio
import base64
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from PIL import Image

from model.images import encode_image, tensor_to_image
from model.person import PersonInputs, openpose_json
from model.stopwatch import Stopwatch

from ...codec.person import decode_garment, decode_person, person_report
from ..deps import ServiceDep, require_api_key, require_ready
from ..errors import ApiError
from ..openapi import BINARY, IMAGE_SCHEMA, INPUT_ERRORS, JSON_IMAGE, PERSON_MIX, binary_content, error_responses, \
    person_request_body
from ..answers import AnswerItem, MultipartMixed, accepts
from ..steps import read_parts, server_timing

PrepareOutput = Literal["masked_model", "pose", "cloth", "mask", "keypoints"]
PNG = "image/png"

prepare = APIRouter(tags=["try-on"], dependencies=[Depends(require_api_key)])

PREPARE_OPENAPI = {
    "requestBody": person_request_body({"multipart": {"cloth": {**IMAGE_SCHEMA, **BINARY}},
                                        "json": {"cloth": JSON_IMAGE}}, options=False, garments_required=False),
    "responses": {"200": {
        "description": "with ?output=masked_model, pose, cloth or mask: that image as PNG; with ?output=keypoints: "
                       "OpenPose JSON (`people[0].pose_keypoints_2d`, COCO-18, the photo's pixels); without: every "
                       "image there is (masked_model, pose, mask for a photo, cloth when one is sent), as "
                       "multipart/mixed (default) or JSON with base64 (Accept: application/json), with `box`. "
                       "`mask` (grey levels) is where a composite into the photo (size=original) uses the model's "
                       "pixels, in the model's frame; the frame is `box` (also X-Person-Box) of the photo",
        "content": binary_content(PNG, "multipart/mixed") | {
            "application/json": {"schema": {"oneOf": [
                {"type": "object", "required": ["size", "media_type"],
                 "properties": {"size": {"type": "array"}, "media_type": {"type": "string"},
                                "box": {"type": ["array", "null"], "description": "left, top, right, bottom"},
                                "masked_model": {"type": "string"}, "pose": {"type": "string"},
                                "cloth": {"type": "string"}, "mask": {"type": "string"}}},
                {"type": "object", "required": ["people"], "description": "?output=keypoints",
                 "properties": {"version": {"type": "number"}, "people": {"type": "array"}}},
            ]}}}}},
}


def _images(person: PersonInputs, cloth, service, names: tuple[str, ...]) -> dict[str, bytes]:
    """The PNG of each name (in a thread: the garment's decoding with them)."""
    pictures = {"masked_model": person.masked_model, "pose": person.pose}
    if person.mask is not None:
        pictures["mask"] = Image.fromarray(person.mask.numpy(), mode="L")
    if cloth is not None:
        pictures["cloth"] = tensor_to_image(decode_garment(person, cloth, service.settings).cloth)
    return {name: encode_image(pictures[name], "png") for name in names if name in pictures}


@prepare.post("/v1/prepare", summary="What the model will see: its inputs as PNG at its size, the crop box, the mask",
              description=PERSON_MIX + " A `cloth` may be sent too: it comes back placed as the model will see it.",
              response_class=Response, openapi_extra=PREPARE_OPENAPI, responses=error_responses(*INPUT_ERRORS))
async def prepare_person(
        request: Request,
        service: ServiceDep,
        output: PrepareOutput | None = Query(None, description="one image only, as image/png, or the keypoints "
                                                               "used (detected or sent) as OpenPose JSON"),
) -> Response:
    require_ready(service, network=False)
    settings = service.settings
    clock = Stopwatch()
    parts, _ = await read_parts(request, service, None, "optional", {})
    cloth = parts.cloths[0] if parts.cloths else None
    if isinstance(cloth, ApiError):
        raise cloth
    if output == "cloth" and cloth is None:
        raise ApiError(422, "no_cloth", "?output=cloth returns the cloth as the model sees it: send one", "cloth")
    person = await asyncio.to_thread(decode_person, parts, settings)
    timings: dict[str, float] = {}
    person_headers = person_report(person, timings, service.metrics)
    height, width = settings.image_hw
    if output == "keypoints":
        if person.keypoints is None:
            raise ApiError(422, "no_keypoints", "masked_model and pose were given: there are no keypoints to "
                           "return; send the person photo", "output")
        timings["prepare"] = clock.elapsed_ms
        return JSONResponse(openpose_json(person.keypoints), headers={
            "Server-Timing": server_timing(timings), **person_headers})
    if output == "mask" and person.mask is None:
        raise ApiError(422, "no_mask", "masked_model was given: nothing is composited into a photo, so there is "
                       "no mask; send the person photo", "output")
    names = (output,) if output else ("masked_model", "pose", "mask", "cloth")
    images = await asyncio.to_thread(_images, person, cloth, service, names)
    timings["prepare"] = clock.elapsed_ms
    headers = {"Server-Timing": server_timing(timings), "X-Image-Size": f"{height}x{width}", **person_headers}
    if output:
        return Response(images[output], media_type=PNG, headers=headers | {
            "Content-Disposition": f'inline; filename="{output}.png"'})
    if accepts(request, "application/json"):
        return JSONResponse({"size": [height, width], "media_type": PNG, "box": person.box,
                             **{name: base64.b64encode(body).decode("ascii") for name, body in images.items()}},
                            headers=headers)
    framing = MultipartMixed()
    body = b"".join(framing.item(AnswerItem(name, PNG, data)) for name, data in images.items()) + framing.end()
    return Response(body, media_type=framing.media_type, headers=headers)
