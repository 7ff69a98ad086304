"""Images as the study reads them: one decoder (bytes to RGB) and one resize, for training,
the audit and inference alike, so whatever the audit accepts trains and predicts the same way.
"""

from __future__ import annotations

import tensorflow as tf

RESIZE_METHODS = ("bilinear", "bicubic", "area", "lanczos3")


# The smallest central crop: a tenth of each side of a 360 px image is 36 px; less keeps no cell.
MIN_CROP_FRACTION = 0.1


def check_crop_fraction(crop_fraction: float) -> None:
    """ValueError unless ``crop_fraction`` is a number in [MIN_CROP_FRACTION, 1]."""
    if (isinstance(crop_fraction, bool) or not isinstance(crop_fraction, int | float)
            or not MIN_CROP_FRACTION <= crop_fraction <= 1):
        raise ValueError(f"crop_fraction must be a number in [{MIN_CROP_FRACTION}, 1], "
                         f"got {crop_fraction!r}")


def decode_rgb(image_bytes: tf.Tensor) -> tf.Tensor:
    """The one decoder of the study: JPEG/PNG/BMP bytes to a uint8 RGB image. The audit calls
    it on every file, so whatever enters a split decodes when it trains."""
    return tf.io.decode_image(image_bytes, channels=3, expand_animations=False)


def decode_and_resize(image_bytes: tf.Tensor, image_size: int,
                      resize_method: str = "bilinear", crop_fraction: float = 1.0) -> tf.Tensor:
    """Decode to RGB, keep the central ``crop_fraction`` of each side, and resize
    (antialiased) to a square uint8 image."""
    check_crop_fraction(crop_fraction)
    image = decode_rgb(image_bytes)
    if crop_fraction < 1:
        image = tf.image.central_crop(image, crop_fraction)
    image = tf.image.resize(image, (image_size, image_size), method=resize_method,
                            antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
