"""Backend-neutral Keras layers that put the paper's input pipeline inside the model graph.

Both are registered serializable classes, so a saved ``.keras`` model loads with
``safe_mode=True`` (no ``Lambda`` layers) once :mod:`engine` is imported.

How the paper's ``ImageDataGenerator`` arguments map onto :class:`XRayAugment`:

| ``ImageDataGenerator`` | ``XRayAugment`` | sampled per image |
| --- | --- | --- |
| ``rotation_range=50`` | ``rotation=50.0`` | angle uniform in [-50, 50] degrees |
| ``width_shift_range=0.2`` | ``width_shift=0.2`` | x shift uniform in [-0.2, 0.2] x width |
| ``height_shift_range=0.2`` | ``height_shift=0.2`` | y shift uniform in [-0.2, 0.2] x height |
| ``zoom_range=0.1`` | ``zoom=0.1`` | x and y scale each uniform in [0.9, 1.1] |
| ``horizontal_flip=True`` | ``horizontal_flip=True`` | mirrored left-right with p = 0.5 |
| ``vertical_flip=True`` | ``vertical_flip=True`` | mirrored top-bottom with p = 0.5 |
| ``fill_mode='nearest'`` (default) | ``fill_mode="nearest"`` | edge pixels repeated |

All six compose into one affine transform per image, applied with one bilinear resampling of
the single grayscale channel; the 3 RGB channels are made afterwards by
:class:`ImageNetPreprocess`. That is why it is several times faster than three separate Keras
augmentation layers on 3 channels.

The resampling is written with ``keras.ops`` gathers (:func:`bilinear_warp`; it gives the same
pixels as ``keras.ops.image.affine_transform``, which the tests check) so that XLA can compile
it. TensorFlow runs a model on the CPU one kernel at a time, and its projective-transform kernel
cannot be compiled by XLA; each layer's arithmetic is therefore wrapped in its own XLA cluster
under TensorFlow (:func:`_xla`), which made the pair about 1.6 times as fast on 2 cores
(``benchmarks/pipeline.py``: 857 to 1,384 images/s). They are two clusters, not one: fused with
the 3-channel copy, XLA computed each warped pixel once per channel. JAX compiles the whole step
with XLA anyway.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from engine.models import acquisition

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)


def _xla(fn):
    """``fn`` as one XLA cluster under TensorFlow (see the module's docstring); unchanged on other backends."""
    if keras.backend.backend() != "tensorflow":
        return fn
    import tensorflow as tf

    return tf.function(fn, jit_compile=True)


def bilinear_warp(images, transforms):
    """Bilinear resampling of one-channel ``images`` (B, H, W, 1) by per-image affine ``transforms`` (B, 8).

    Output pixel (x, y) samples input point (a0 x + a1 y + a2, b0 x + b1 y + b2), as in
    ``keras.ops.image.affine_transform``; points outside are moved to the nearest edge
    (``fill_mode="nearest"``). Coordinates are float32 whatever the input's dtype, so a
    float16 policy does not round them; the result is float32.
    """
    batch, height, width = ops.shape(images)[0], images.shape[1], images.shape[2]
    rows, cols = ops.meshgrid(ops.arange(height, dtype="float32"), ops.arange(width, dtype="float32"), indexing="ij")
    t = ops.cast(transforms, "float32")
    a0, a1, a2, b0, b1, b2 = (t[:, i, None, None] for i in range(6))
    x = ops.clip(a0 * cols + a1 * rows + a2, 0.0, width - 1.0)
    y = ops.clip(b0 * cols + b1 * rows + b2, 0.0, height - 1.0)
    x0, y0 = ops.floor(x), ops.floor(y)
    wx, wy = x - x0, y - y0
    x0, y0 = ops.cast(x0, "int32"), ops.cast(y0, "int32")
    x1, y1 = ops.minimum(x0 + 1, width - 1), ops.minimum(y0 + 1, height - 1)
    flat = ops.reshape(images, (-1,))
    first = ops.reshape(ops.arange(batch, dtype="int32") * (height * width), (-1, 1, 1))
    row0, row1 = first + y0 * width, first + y1 * width

    def at(index):
        return ops.cast(ops.take(flat, index), "float32")

    top = at(row0 + x0) * (1.0 - wx) + at(row0 + x1) * wx
    bottom = at(row1 + x0) * (1.0 - wx) + at(row1 + x1) * wx
    return ops.expand_dims(top * (1.0 - wy) + bottom * wy, -1)


_warp = _xla(bilinear_warp)


def _gray_to_channels(gray, scale, shift):
    return ops.repeat(gray, 3, axis=-1) * scale + shift


_to_channels = _xla(_gray_to_channels)


@keras.saving.register_keras_serializable(package="cxr")
class XRayAugment(keras.layers.Layer):
    """Random rotation, shift, zoom and flips as one affine warp, then intensity changes; identity at inference.

    The intensity changes model other acquisitions of the same anatomy, each drawn per image:
    a contrast stretch about the image's mean and a gamma, both log-uniform in [1/x, x], a
    brightness offset uniform in [-x, x] grey levels, and Gaussian noise whose sd is uniform in
    [0, x]. At their defaults (1, 1, 0, 0) nothing is drawn, so the paper's augmentation stream is
    exactly what it was before they existed.
    """

    def __init__(
        self,
        rotation: float = 50.0,
        width_shift: float = 0.2,
        height_shift: float = 0.2,
        zoom: float = 0.1,
        horizontal_flip: bool = True,
        vertical_flip: bool = True,
        fill_mode: str = "nearest",
        seed: int | None = None,
        brightness: float = 0.0,
        contrast: float = 1.0,
        gamma: float = 1.0,
        noise: float = 0.0,
        min_resolution: int = 0,
        blur: float = 0.0,
        sharpen: float = 0.0,
        **kwargs,
    ) -> None:
        for name, value in (("contrast", contrast), ("gamma", gamma)):
            if value < 1.0:
                raise ValueError(f"{name} is a factor range [1/x, x], so it must be at least 1, got {name}={value!r}")
        if fill_mode != "nearest":
            raise ValueError(
                f"fill_mode must be 'nearest' (ImageDataGenerator's default, the paper's), got fill_mode={fill_mode!r}"
            )
        super().__init__(**kwargs)
        self.rotation = float(rotation)
        self.width_shift = float(width_shift)
        self.height_shift = float(height_shift)
        self.zoom = float(zoom)
        self.horizontal_flip = bool(horizontal_flip)
        self.vertical_flip = bool(vertical_flip)
        self.fill_mode = fill_mode
        self.seed = seed
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.gamma = float(gamma)
        self.noise = float(noise)
        self.min_resolution = int(min_resolution)
        self.blur = float(blur)
        self.sharpen = float(sharpen)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _uniform(self, batch, low: float, high: float):
        return keras.random.uniform((batch,), minval=low, maxval=high, seed=self.seed_generator)

    def _flip(self, batch, enabled: bool):
        if not enabled:
            return ops.ones((batch,))
        coin = keras.random.uniform((batch,), seed=self.seed_generator)
        return ops.where(coin < 0.5, -1.0, 1.0)

    def transforms(self, batch, height: int, width: int):
        """Per-image 8-vectors mapping each output pixel to the input pixel it samples."""
        angle = self._uniform(batch, -self.rotation, self.rotation) * (math.pi / 180.0)
        zx = self._uniform(batch, 1.0 - self.zoom, 1.0 + self.zoom)
        zy = self._uniform(batch, 1.0 - self.zoom, 1.0 + self.zoom)
        tx = self._uniform(batch, -self.width_shift, self.width_shift) * width
        ty = self._uniform(batch, -self.height_shift, self.height_shift) * height
        fx = self._flip(batch, self.horizontal_flip)
        fy = self._flip(batch, self.vertical_flip)
        cos, sin = ops.cos(angle), ops.sin(angle)
        m00, m01 = cos * zx * fx, -sin * zy * fy
        m10, m11 = sin * zx * fx, cos * zy * fy
        cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
        a2 = cx - m00 * cx - m01 * cy + tx
        b2 = cy - m10 * cx - m11 * cy + ty
        zeros = ops.zeros_like(angle)
        return ops.stack([m00, m01, a2, m10, m11, b2, zeros, zeros], axis=1)

    def _factor(self, batch, spread: float):
        """Per-image factors log-uniform in [1/spread, spread], shaped to broadcast over (H, W, 1)."""
        log = math.log(spread)
        return ops.reshape(ops.exp(self._uniform(batch, -log, log)), (-1, 1, 1, 1))

    def intensity(self, images):
        """The intensity changes on warped float32 images in [0, 255]; nothing is drawn for those left at default."""
        batch = ops.shape(images)[0]
        x = images
        if self.contrast > 1.0:
            mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
            x = (x - mean) * self._factor(batch, self.contrast) + mean
        if self.gamma > 1.0:
            x = 255.0 * ops.power(ops.clip(x, 0.0, 255.0) / 255.0, self._factor(batch, self.gamma))
        if self.brightness > 0.0:
            x = x + ops.reshape(self._uniform(batch, -self.brightness, self.brightness), (-1, 1, 1, 1))
        if self.noise > 0.0:
            sd = ops.reshape(self._uniform(batch, 0.0, self.noise), (-1, 1, 1, 1))
            x = x + sd * keras.random.normal(ops.shape(x), seed=self.seed_generator)
        return ops.clip(x, 0.0, 255.0) if x is not images else x

    def acquisition(self, images):
        """Another acquisition of the same film, drawn per image: a lower resolution, then a blur or sharpening
        (``engine.models.acquisition``); nothing is drawn for those left at their default of 0."""
        x = images
        if self.min_resolution:
            x = acquisition.random_resolution(x, minimum=self.min_resolution, seed_generator=self.seed_generator)
        if self.blur or self.sharpen:
            x = acquisition.blur_or_sharpen(x, blur=self.blur, sharpen=self.sharpen, seed_generator=self.seed_generator)
        return x

    def call(self, images, training=None):
        if not training:
            return ops.cast(images, self.compute_dtype)
        matrix = self.transforms(ops.shape(images)[0], images.shape[1], images.shape[2])
        return ops.cast(self.intensity(self.acquisition(_warp(images, matrix))), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "rotation": self.rotation,
            "width_shift": self.width_shift,
            "height_shift": self.height_shift,
            "zoom": self.zoom,
            "horizontal_flip": self.horizontal_flip,
            "vertical_flip": self.vertical_flip,
            "fill_mode": self.fill_mode,
            "seed": self.seed,
            "brightness": self.brightness,
            "contrast": self.contrast,
            "gamma": self.gamma,
            "noise": self.noise,
            "min_resolution": self.min_resolution,
            "blur": self.blur,
            "sharpen": self.sharpen,
        }


@keras.saving.register_keras_serializable(package="cxr")
class ImageNetPreprocess(keras.layers.Layer):
    """Grayscale [0, 255] to the 3-channel input a backbone's own ``preprocess_input`` makes.

    ``mode`` is the one ``keras.applications`` uses for the architecture: ``tf`` (scale to
    [-1, 1]), ``caffe`` (BGR, ImageNet mean subtracted) or ``torch`` (scale to [0, 1], ImageNet
    mean and std). A gray image has equal R, G and B, so the channel swap of ``caffe`` only
    reorders the means.

    ``intensity`` and ``downscale`` harmonise every image alike first (``engine.models.acquisition``): every
    ``downscale`` x ``downscale`` block averaged, histogram equalisation (read at ``segments`` + 1 grey levels)
    or per-image standardisation, then resized back. They are part of what the model computes and of its saved
    configuration, so serving, export and cached features all carry them.

    ``xla=False`` runs the same arithmetic without its XLA cluster (:func:`_xla`), for exported
    graphs (``engine.models.export``): tf2onnx cannot convert the compiled function, an unsupported
    ``PartitionedCall``. It is how the layer runs, not what it computes, so it is not saved.
    """

    def __init__(
        self,
        mode: str,
        *,
        xla: bool = True,
        intensity: str = "none",
        downscale: int = 1,
        segments: int = acquisition.EQUALISE_SEGMENTS,
        **kwargs,
    ) -> None:
        if mode not in ("tf", "caffe", "torch"):
            raise ValueError(f"mode must be 'tf', 'caffe' or 'torch', got mode={mode!r}")
        if intensity not in acquisition.INTENSITIES:
            raise ValueError(f"intensity must be one of {acquisition.INTENSITIES}, got intensity={intensity!r}")
        if int(downscale) < 1:
            raise ValueError(f"downscale must be at least 1, got downscale={downscale!r}")
        super().__init__(**kwargs)
        self.mode = mode
        self.xla = bool(xla)
        self.intensity = intensity
        self.downscale = int(downscale)
        self.segments = int(segments)

    @property
    def harmonises(self) -> bool:
        return self.intensity != "none" or self.downscale > 1

    def scale_and_shift(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel ``scale`` and ``shift``: the mode's preprocessing is ``gray * scale + shift`` per channel."""
        if self.mode == "tf":
            return (1 / 127.5,) * 3, (-1.0,) * 3
        if self.mode == "caffe":
            return (1.0,) * 3, tuple(-m for m in CAFFE_MEAN_BGR)
        scale = tuple(1 / (255.0 * s) for s in TORCH_STD_RGB)
        return scale, tuple(-m / s for m, s in zip(TORCH_MEAN_RGB, TORCH_STD_RGB, strict=True))

    def call(self, images):
        scale, shift = self.scale_and_shift()
        to_channels = _to_channels if self.xla else _gray_to_channels
        if self.harmonises:
            images = acquisition.harmonise(
                images, intensity=self.intensity, downscale_by=self.downscale, segments=self.segments
            )
        return to_channels(
            ops.cast(images, self.compute_dtype),
            ops.convert_to_tensor(scale, dtype=self.compute_dtype),
            ops.convert_to_tensor(shift, dtype=self.compute_dtype),
        )

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "mode": self.mode,
            "intensity": self.intensity,
            "downscale": self.downscale,
            "segments": self.segments,
        }


@keras.saving.register_keras_serializable(package="cxr")
class BlockStatisticsPool(keras.layers.Layer):
    """Feature maps of several blocks (shallow to deep) to one vector: each map's per-channel mean and
    standard deviation over space, the deepest map first, less ``center`` (the training images' mean,
    set when the head is fitted; zeros before).

    The deepest map's means come first so that a head's kernel rows ``[:C]`` (``C`` its channels) are
    the ones Grad-CAM needs: the standard deviations' spatial gradients average to zero, and the
    shallower maps do not pass through the deepest one (``engine.models.serving``). Centring here, not
    in the head's bias, keeps float32 from cancelling large terms: features of ReLU maps sit far from
    zero compared with how much they vary.
    """

    def build(self, input_shape):
        dim = 2 * sum(int(shape[-1]) for shape in input_shape)
        self.center = self.add_weight(shape=(dim,), initializer="zeros", trainable=False, name="center")

    def call(self, maps):
        parts = []
        for fmap in reversed(list(maps)):
            mean = ops.mean(fmap, axis=(1, 2), keepdims=True)
            spread = ops.mean(ops.square(fmap - mean), axis=(1, 2))
            parts += [ops.squeeze(mean, axis=(1, 2)), ops.sqrt(spread + 1e-6)]
        return ops.concatenate(parts, axis=-1) - self.center

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 2 * sum(int(shape[-1]) for shape in input_shape))

    @staticmethod
    def segments(channels: list[int]) -> list[int]:
        """Length of each part of the output, in order, for maps of ``channels`` (shallow to deep)."""
        return [c for c in reversed(channels) for _ in range(2)]
