"""Images in and out of the network: bytes or PIL images <-> normalised tensors.

One module a part, read in this order: ``levels`` (8-bit images, uint8 levels, the network's
values, resizing), ``decode`` (bytes -> upright RGB), ``letterbox`` (the geometry policy: how an
input of any size fits the model's), ``crop`` (a person photo's frame: a box cut out around the
person), ``garment`` (a garment photo cut to the garment, placed as VITON's are), ``inputs`` (one
request's three model inputs), ``composite`` (a result back into the person's photo), ``encode``
(the result back to an image and to bytes), ``quality`` (PSNR). Callers import from here.
"""
from .decode import (DEFAULT_MAX_PIXELS, HeaderPixels, ImageError, ImageSource, ImageTooLarge, decode_image,
                     decode_levels_to_fit, decode_to_fit, header_pixels, open_image)
from .encode import (DEFAULT_QUALITY, ENCODE_FORMATS, MAX_SIDE, MEDIA_TYPES, OUTPUT_FORMATS, OUTPUT_SIZES,
                     OutputFormat, OutputSize, encode_image, output_image, output_size_error)
from .composite import Composite, feathered_mask
from .crop import Crop
from .inputs import MODEL_SIZE_HW, TryOnInputs, assemble_inputs, letterbox_person, prepare_inputs
from .letterbox import Letterbox
from .levels import (BLACK, WHITE, Picture, as_levels, image_to_levels, image_to_tensor, levels_to_tensor,
                     picture_levels, picture_size_wh, resize_bicubic, resize_levels, stack_levels, tensor_to_image,
                     tensor_to_levels)
from .quality import psnr, psnr_8bit, to_8bit

__all__ = ["BLACK", "DEFAULT_MAX_PIXELS", "DEFAULT_QUALITY", "ENCODE_FORMATS", "MAX_SIDE", "MEDIA_TYPES",
           "MODEL_SIZE_HW", "OUTPUT_FORMATS", "OUTPUT_SIZES", "WHITE", "Composite", "Crop", "HeaderPixels", "ImageError",
           "ImageSource", "ImageTooLarge", "Letterbox", "OutputFormat", "OutputSize", "Picture", "TryOnInputs",
           "as_levels", "assemble_inputs", "decode_image", "decode_levels_to_fit", "decode_to_fit", "encode_image",
           "feathered_mask", "header_pixels", "image_to_levels", "image_to_tensor", "letterbox_person",
           "levels_to_tensor", "open_image", "output_image", "output_size_error",
           "picture_levels", "picture_size_wh", "prepare_inputs", "psnr", "psnr_8bit", "resize_bicubic",
           "resize_levels", "stack_levels", "tensor_to_image", "tensor_to_levels", "to_8bit"]
