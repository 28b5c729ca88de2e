"""What the codec decodes: a request's (or a job's) inputs as they came, bytes or URLs still to fetch."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from model.person import IncompleteInputs

from .errors import ApiError

KEYPOINTS_FIELD = "keypoints"


@dataclass
class RequestParts:
    """A request's inputs before fetching and decoding: bytes, or a URL still to fetch."""
    person: dict[str, bytes | str] = field(default_factory=dict)
    keypoints: Any = None  # JSON text or bytes, or the decoded object/list
    cloths: list[bytes | str | ApiError] = field(default_factory=list)  # an ApiError: that garment failed
    options: dict = field(default_factory=dict)
    decode_bytes: int = 0  # what decoding the images will hold, as their headers say (steps.complete_parts)

    @property
    def given(self) -> set[str]:
        return set(self.person) | ({KEYPOINTS_FIELD} if self.keypoints is not None else set())


def person_mix_error(exc: IncompleteInputs) -> ApiError:
    """The model's mix rule failure as the service's 422; ``field`` lists the inputs concerned."""
    code = f"{exc.kind}_inputs"
    return ApiError(422, code, exc.message, ",".join(exc.fields))
