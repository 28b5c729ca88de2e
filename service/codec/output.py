"""The model's result out: the output options (parsed once, at an entry point, into ``OutputOptions``)
and one result encoded in them."""
from __future__ import annotations

from pydantic import BaseModel, Field

from model.images import DEFAULT_QUALITY, OutputFormat, OutputSize, encode_image, output_image

from .. import tracing


class OutputOptions(BaseModel):
    format: OutputFormat = "jpeg"
    quality: int = Field(DEFAULT_QUALITY, ge=1, le=100)
    size: OutputSize = "model"


@tracing.traced("encode")
def encode_output(output, frame, options: OutputOptions) -> bytes:
    """One (3, H, W) result as image bytes, at model size or the person's original size (``frame``:
    a Letterbox undone, or for a photo a Composite: the photo itself, dressed under the mask)."""
    return encode_image(output_image(output, frame, options.size), options.format, options.quality)
