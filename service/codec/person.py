"""Decoded request parts -> what the model sees, with the model's errors as the service's.

Runs in a thread (decoding and drawing are CPU work). The person side goes
through model.person.person_images, so the service draws exactly what
the CLI and the library draw: a person photo is framed as VITON frames its
people (``X-Person-Box`` says where), and kept, when the result goes back
into it (``size=original``), with the digest of its bytes for the response
cache. Each garment is then placed in the person's frame on its own, so one
unreadable garment fails only itself. A person is decoded once for all the
garments of a request or a job's task.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

from blake3 import blake3

from model.images import ImageError, ImageTooLarge, TryOnInputs, assemble_inputs, header_pixels
from model.person import (DetectionError, DetectorUnavailable, IncompleteInputs, KeypointsError, PersonInputs,
                          person_images)

from .. import tracing
from .errors import ApiError
from .sources import RequestParts, person_mix_error
from ..metrics import Metrics
from ..settings import Settings

# ImageError messages that mean "these bytes are no image" (415); others (a parsing
# map of another aspect ratio, a colour visualisation) are unusable content (422).
_NOT_AN_IMAGE = ("empty file", "not an image", "corrupt", "image has no pixels")


@contextmanager
def model_errors():
    """Maps the model's input errors to ApiError: 422 for the mix and for keypoints
    (``field`` names them), 413 for too many pixels, 415 or 422 for images; and 503 for a
    photo when the person detector could not be loaded (no Retry-After: this process will
    not have one; masked models and pose maps are still served)."""
    try:
        yield
    except IncompleteInputs as exc:
        raise person_mix_error(exc) from None
    except DetectorUnavailable as exc:
        raise ApiError(503, "person_detector_unavailable", f"{exc}; send the masked model and pose map "
                       "instead of the photo", "person") from None
    except DetectionError as exc:
        raise ApiError(422, exc.code, exc.message, exc.field) from None
    except KeypointsError as exc:
        raise ApiError(422, "invalid_keypoints", exc.message, "keypoints") from None
    except ImageTooLarge as exc:
        raise ApiError(413, "image_too_large", exc.message, exc.field) from None
    except ImageError as exc:
        if exc.message.startswith(_NOT_AN_IMAGE):
            raise ApiError(415, "not_an_image", exc.message, exc.field) from None
        raise ApiError(422, f"invalid_{exc.field}", exc.message, exc.field) from None


def decode_bytes(parts: RequestParts, settings: Settings, most: int, garments: str = "one") -> int:
    """What decoding the request's images will hold at its peak, from their headers alone
    (HeaderPixels.decode_bytes): the person side's images together, then the garments one after
    another (so the largest of them). An image that alone would take more than ``most`` (the
    process's bytes in flight) is refused with 413 naming its field; a garment's refusal in a
    batch (``garments`` "many") takes its place as its result instead. A size=original composite
    comes after decoding's working memory is given back, and within it: a 12 MP photo is estimated
    at 216 MB here, its whole request grew RSS by 149 MB, 85 MB of it compositing and encoding
    (bench/results/composite-cpu.json)."""
    target_wh = (settings.image_hw[1], settings.image_hw[0])

    def cost(source, field: str) -> int:
        # A photo is decoded whole (its crop box is known only once its keypoints are); the others at
        # the scale their letterbox allows.
        measured = header_pixels(source, None if field == "person" else target_wh)
        if measured is not None and measured.decode_bytes > most:
            (width, height), bits = measured.size_wh, measured.bits_per_pixel
            raise ApiError(413, "image_too_large", f"{width}x{height} pixels of {bits} bits would take "
                           f"{measured.decode_bytes} bytes to decode, more than the {most} bytes this process "
                           "holds in flight for all requests (TRYON_MAX_BYTES_IN_FLIGHT)", field)
        return measured.decode_bytes if measured is not None else 0

    person = sum(cost(source, field) for field, source in parts.person.items() if isinstance(source, bytes))
    largest = 0
    for i, cloth in enumerate(parts.cloths):
        if isinstance(cloth, bytes):
            try:
                largest = max(largest, cost(cloth, "cloth"))
            except ApiError as exc:
                if garments != "many":
                    raise
                parts.cloths[i] = exc
    return person + largest


@tracing.traced("person")
def decode_person(parts: RequestParts, settings: Settings, keep_photo: bool = False) -> PersonInputs:
    """The masked model and pose map at the model's size, drawn where not given
    (a person photo alone: its keypoints detected here, in the same thread); ``keep_photo``
    (``size=original``): the photo kept to composite results into."""
    with model_errors():
        person = person_images(**parts.person, keypoints=parts.keypoints, size_hw=settings.image_hw,
                               max_pixels=settings.max_image_pixels, silhouette=settings.person_silhouette,
                               keep_photo=keep_photo)
    if person.composite is not None:  # the answer depends on the whole photo, not only on what the model saw
        photo_id = blake3(parts.person["person"]).hexdigest()
        person = replace(person, composite=replace(person.composite, photo_id=photo_id))
    return person


def person_report(person: PersonInputs, timings: dict[str, float], metrics: Metrics) -> dict[str, str]:
    """The headers of a person photo's answer: ``X-Person-Box``, where the model looked (left, top,
    right, bottom in the upright photo's pixels); and where the keypoints were detected, ``detect``
    in the timings, the histogram observed, and how many people the photo holds (several: the most
    prominent was used)."""
    headers = {"X-Person-Box": ",".join(map(str, person.box))} if person.box is not None else {}
    detection = person.detection
    if detection is None:
        return headers
    timings["detect"] = detection.seconds * 1000
    metrics.detection.observe(detection.seconds)
    headers["X-Person-Count"] = str(detection.person_count)
    if detection.person_count > 1:
        headers["X-Person-Warning"] = (f"{detection.person_count} people in the person photo; "
                                       "the most prominent one was used")
    return headers


def decode_garment(person: PersonInputs, cloth: bytes, settings: Settings) -> TryOnInputs:
    """One garment with the person's images: the model's three input tensors."""
    with model_errors():
        return assemble_inputs(person.masked_model_levels, person.pose_levels, person.output_frame, cloth,
                               max_pixels=settings.max_image_pixels)


@tracing.traced("decode")
def decode_garments(person: PersonInputs, cloths: list, settings: Settings) -> list[TryOnInputs | ApiError]:
    """Every garment of a batch; a failed one (already, or now) stays an ApiError in its place."""
    decoded = []
    for cloth in cloths:
        try:
            decoded.append(cloth if isinstance(cloth, ApiError) else decode_garment(person, cloth, settings))
        except ApiError as exc:
            decoded.append(exc)
    return decoded
