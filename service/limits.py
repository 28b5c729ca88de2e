"""Request-body limits, the one formula the service and nginx's rendered config share.

Standard library only and free of package imports: docker/render_nginx.py
loads this file by path before anything is installed.
"""
from __future__ import annotations

# A person side carries at most three images (masked model or person, pose, parse).
PERSON_IMAGES = 3
# Keypoint JSON, options and multipart framing.
FIELDS_ALLOWANCE = 65_536


def body_limit(max_upload_bytes: int, images: int) -> int:
    """A body carrying ``images`` images as base64 (4/3 of their bytes; multipart
    needs less) plus the other fields."""
    return images * (max_upload_bytes * 4 // 3 + 4) + FIELDS_ALLOWANCE


def request_body_limit(max_upload_bytes: int) -> int:
    """/v1/tryon and /v1/prepare: the person side and one garment fit in three images' room."""
    return body_limit(max_upload_bytes, PERSON_IMAGES)


def batch_body_limit(max_upload_bytes: int, max_garments: int) -> int:
    """/v1/tryon/batch: the person side and up to ``max_garments`` garments."""
    return body_limit(max_upload_bytes, PERSON_IMAGES + max_garments)
