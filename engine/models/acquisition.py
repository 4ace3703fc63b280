"""Acquisition in the graph: what harmonises every image alike, and what varies it while a model trains.

The public COVID-19 sets differ by class in how their films were made, not only in disease: the COVID-19
images were published already downscaled (much smoother), the others came as larger JPEGs. A model can
learn that. Two remedies, both backend-neutral ``keras.ops`` on grayscale (B, H, W, 1) in [0, 255]:

- **harmonisation**, the same for every image in training and in use (it lives in the preprocessing layer,
  so serving, export and the cached features carry it): :func:`equalise` (histogram equalisation) or
  :func:`standardise` (per-image mean and spread), then :func:`downscale_and_back` (every image at the same
  lower resolution, so detail finer than it cannot tell sources apart);
- **variation** while training only (``engine.models.layers.XRayAugment``): :func:`random_resolution`
  and :func:`blur_or_sharpen`, drawn per image. JPEG re-encoding is done on the host
  (``engine.training.batches``), since no backend-neutral op encodes JPEG.

Everything here is made of ops LiteRT and ONNX convert (comparisons, means, pooling, bilinear resize).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

INTENSITIES = ("none", "equalise", "standardise")
HARMONISE_VERSION = 2
"""Changes whenever :func:`harmonise` computes something else, so features cached under another version are
computed again (2: the intensity step at the downscaled resolution)."""
EQUALISE_SEGMENTS = 32
STANDARD_SPREAD = 42.0
RESOLUTION_STEPS = 5


def equalise(images, segments: int = EQUALISE_SEGMENTS):
    """Histogram equalisation, each image mapped through its own cumulative histogram.

    The histogram is read at ``segments`` + 1 evenly spaced grey levels and the mapping is linear between
    them: exact at those levels, a piecewise-linear equalisation in between, and no gather or sort, so
    LiteRT and ONNX take it as they are.
    """
    edges = ops.linspace(0.0, 255.0, segments + 1)
    x = ops.cast(images, "float32")
    cdf = ops.mean(ops.cast(x <= edges, "float32"), axis=(1, 2))
    rise = ops.reshape(cdf[:, 1:] - cdf[:, :-1], (-1, 1, 1, segments))
    width = 255.0 / segments
    ramps = ops.clip((x - edges[:-1]) / width, 0.0, 1.0)
    level = ops.reshape(cdf[:, :1], (-1, 1, 1, 1)) + ops.sum(ramps * rise, axis=-1, keepdims=True)
    return 255.0 * level


def standardise(images):
    """Each image to mean 128 and standard deviation :data:`STANDARD_SPREAD` grey levels, clipped to [0, 255]."""
    x = ops.cast(images, "float32")
    mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
    sd = ops.sqrt(ops.mean(ops.square(x - mean), axis=(1, 2, 3), keepdims=True) + 1.0)
    return ops.clip(128.0 + STANDARD_SPREAD * (x - mean) / sd, 0.0, 255.0)


def downscale(images, factor: int):
    """Each ``factor`` x ``factor`` block averaged: an area downscale."""
    return ops.average_pool(ops.cast(images, "float32"), pool_size=factor, strides=factor, padding="valid")


def downscale_and_back(images, factor: int):
    """:func:`downscale`, then bilinear back to the input's size."""
    return ops.image.resize(downscale(images, factor), images.shape[1:3], interpolation="bilinear")


def harmonise(images, *, intensity: str, downscale_by: int, segments: int = EQUALISE_SEGMENTS):
    """Resolution first (an area downscale), then intensity at that resolution, then bilinear back to the input's
    size; identity at the defaults. Equalising the small image is a quarter of the work at a factor of 2, and
    the histogram of the block averages is the one the network's input is made of."""
    x = downscale(images, downscale_by) if downscale_by > 1 else images
    if intensity == "equalise":
        x = equalise(x, segments)
    elif intensity == "standardise":
        x = standardise(x)
    if downscale_by > 1:
        x = ops.image.resize(x, images.shape[1:3], interpolation="bilinear")
    return x


def resolution_steps(minimum: int, size: int) -> list[int]:
    """The sides :func:`random_resolution` draws from: :data:`RESOLUTION_STEPS` from ``minimum`` to ``size``."""
    return sorted({int(round(s)) for s in np.linspace(minimum, size, RESOLUTION_STEPS)})


def random_resolution(images, *, minimum: int, seed_generator):
    """Each image downscaled (antialiased) to a side drawn from :func:`resolution_steps` and resized back."""
    batch, height, width = ops.shape(images)[0], images.shape[1], images.shape[2]
    steps = resolution_steps(minimum, height)
    x = ops.cast(images, "float32")
    versions = []
    for side in steps:
        if side >= height:
            versions.append(x)
            continue
        small = ops.image.resize(x, (side, side), interpolation="bilinear", antialias=True)
        versions.append(ops.image.resize(small, (height, width), interpolation="bilinear"))
    choice = keras.random.randint((batch,), 0, len(steps), seed=seed_generator)
    pick = ops.reshape(ops.one_hot(choice, len(steps)), (-1, len(steps), 1, 1, 1))
    return ops.sum(ops.stack(versions, axis=1) * pick, axis=1)


def gaussian_blur(images, sigma: float):
    """A separable Gaussian blur of one-channel images, mirrored at the edges."""
    radius = max(1, int(round(3 * sigma)))
    taps = ops.exp(-ops.square(ops.arange(-radius, radius + 1, dtype="float32")) / (2.0 * sigma**2))
    taps = taps / ops.sum(taps)
    padded = ops.pad(
        ops.cast(images, "float32"), ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="symmetric"
    )
    across = ops.conv(padded, ops.reshape(taps, (1, -1, 1, 1)), padding="valid")
    return ops.conv(across, ops.reshape(taps, (-1, 1, 1, 1)), padding="valid")


def blur_or_sharpen(images, *, blur: float, sharpen: float, seed_generator):
    """Per image ``x + c (G(x) - x)``, ``G`` a Gaussian blur of sd ``blur`` (1 px when only sharpening) and ``c``
    uniform in [-``sharpen``, 1 if ``blur`` else 0]: a partial blur above 0, an unsharp mask below."""
    batch = ops.shape(images)[0]
    x = ops.cast(images, "float32")
    detail = gaussian_blur(x, blur if blur > 0 else 1.0) - x
    high = 1.0 if blur > 0 else 0.0
    c = keras.random.uniform((batch,), minval=-sharpen, maxval=high, seed=seed_generator)
    return ops.clip(x + ops.reshape(c, (-1, 1, 1, 1)) * detail, 0.0, 255.0)
