"""
Training augmentation: one random geometric transform applied to image AND mask, then colour.

Flip, scale (zoom in = crop, zoom out = smaller, far-away looking people), shift and a small
rotation are folded into one projective matrix, applied to the image with bilinear and to the
mask with nearest-neighbour sampling, so both always move together. Colour jitter touches the
image only. All randomness is stateless and seeded per draw, so runs are reproducible.
"""

from dataclasses import dataclass
import math

import tensorflow as tf


@dataclass(frozen=True)
class AugmentConfig:
    flip: bool = True              # horizontal flip with probability 0.5
    scale: tuple = (1.0, 1.0)      # zoom factor range; > 1 zooms in, < 1 zooms out
    shift: float = 0.0             # extra random shift, as a fraction of the frame size
    rotate_deg: float = 0.0        # rotation range +-degrees
    brightness: float = 0.0        # max brightness delta (pixel values in [0, 1])
    contrast: float = 0.0          # contrast factor in [1 - c, 1 + c]
    saturation: float = 0.0        # saturation factor in [1 - s, 1 + s]
    hue: float = 0.0               # max hue delta, in [0, 0.5]

    @classmethod
    def from_dict(cls, values):
        values = dict(values or {})
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown augment settings: {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(cls.__dataclass_fields__)})")
        if 'scale' in values:
            values['scale'] = tuple(float(v) for v in values['scale'])
            if len(values['scale']) != 2 or min(values['scale']) <= 0:
                raise ValueError(f"augment scale must be [min, max] > 0, got {values['scale']}")
        return cls(**values)


def geometric_matrix(seed, height, width, config: AugmentConfig):
    """Return the 8 projective coefficients mapping output pixels to input pixels."""
    seeds = tf.random.experimental.stateless_split(seed, num=5)
    flip = tf.constant(1.0)
    if config.flip:
        flip = tf.where(tf.random.stateless_uniform([], seeds[0]) < 0.5, -1.0, 1.0)
    low, high = config.scale
    # Log-uniform zoom, so zooming in and out by the same factor are equally likely.
    scale = tf.exp(tf.random.stateless_uniform([], seeds[1], math.log(low), math.log(high)))
    angle = tf.random.stateless_uniform(
        [], seeds[2], -config.rotate_deg, config.rotate_deg) * (math.pi / 180.0)
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    # Zoomed in, the crop window may move anywhere inside the frame; plus the extra shift.
    room = tf.maximum(0.0, 1.0 - 1.0 / scale) / 2.0 + config.shift
    shift_x = tf.random.stateless_uniform([], seeds[3], -room, room) * width
    shift_y = tf.random.stateless_uniform([], seeds[4], -room, room) * height
    centre_x, centre_y = (width - 1) / 2.0, (height - 1) / 2.0
    a0, a1 = cos * flip, -sin
    b0, b1 = sin * flip, cos
    a2 = centre_x + shift_x - a0 * centre_x - a1 * centre_y
    b2 = centre_y + shift_y - b0 * centre_x - b1 * centre_y
    return tf.stack([a0, a1, a2, b0, b1, b2, 0.0, 0.0])


def _transform(pixels, matrix, interpolation):
    height, width = pixels.shape[0], pixels.shape[1]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=pixels[None], transforms=matrix[None], output_shape=[height, width],
        fill_value=0.0, interpolation=interpolation, fill_mode='REFLECT')
    return out[0]


def augment(image, ids, seed, config: AugmentConfig):
    """Augment one frame: image uint8 (H, W, 3), ids uint8 (H, W), seed int64 [2]."""
    height, width = image.shape[0], image.shape[1]
    geo_seed, colour_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    matrix = geometric_matrix(geo_seed, height, width, config)
    image = _transform(tf.cast(image, tf.float32), matrix, 'BILINEAR')
    ids = _transform(ids[:, :, None], matrix, 'NEAREST')[:, :, 0]
    image = colour_jitter(image / 255.0, colour_seed, config)
    image = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0), tf.uint8)
    return image, ids


def colour_jitter(image, seed, config: AugmentConfig):
    """Brightness, contrast, saturation and hue jitter on a float image in [0, 1]."""
    seeds = tf.random.experimental.stateless_split(seed, num=4)
    if config.brightness > 0:
        image = tf.image.stateless_random_brightness(image, config.brightness, seeds[0])
    if config.contrast > 0:
        image = tf.image.stateless_random_contrast(
            image, 1.0 - config.contrast, 1.0 + config.contrast, seeds[1])
    if config.saturation > 0:
        image = tf.image.stateless_random_saturation(
            image, 1.0 - config.saturation, 1.0 + config.saturation, seeds[2])
    if config.hue > 0:
        image = tf.image.stateless_random_hue(image, config.hue, seeds[3])
    return image


def make_augment_fn(config: AugmentConfig):
    """Return a function (image, ids, seed) -> (image, ids) for the training pipeline."""
    def augment_fn(image, ids, seed):
        return augment(image, ids, seed, config)
    return augment_fn
