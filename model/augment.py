"""Training-time augmentation: small affine moves plus elastic distortion (Simard et al., 2003).

Runs inside ``tf.data`` on batches of float images (B, 28, 28, 1) in [0, 1].
"""

from __future__ import annotations

import math


def gaussian_kernel(sigma: float):
    """A normalized 1-D Gaussian of radius ``2 * sigma``, as a float32 tensor."""
    import tensorflow as tf

    radius = max(1, int(math.ceil(2 * sigma)))
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    k = tf.exp(-(x**2) / (2.0 * sigma**2))
    return k / tf.reduce_sum(k)


def elastic(images, alpha: float, sigma: float, seed: int | None = None):
    """Displace every pixel by a random field smoothed with a Gaussian (``sigma`` px)
    and scaled by ``alpha``; bilinear resampling, zeros outside the image."""
    import tensorflow as tf

    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    field = tf.random.uniform(tf.stack([b, h, w, 2]), -1.0, 1.0, seed=seed)
    k = gaussian_kernel(sigma)
    n = int(k.shape[0])
    # separable blur of both displacement channels
    kx = tf.tile(tf.reshape(k, [1, n, 1, 1]), [1, 1, 2, 1])
    ky = tf.tile(tf.reshape(k, [n, 1, 1, 1]), [1, 1, 2, 1])
    field = tf.nn.depthwise_conv2d(field, kx, [1, 1, 1, 1], "SAME")
    field = tf.nn.depthwise_conv2d(field, ky, [1, 1, 1, 1], "SAME") * alpha
    gy, gx = tf.meshgrid(tf.range(h, dtype=tf.float32), tf.range(w, dtype=tf.float32), indexing="ij")
    y = gy[None] + field[..., 0]
    x = gx[None] + field[..., 1]
    return bilinear_sample(images, y, x)


def bilinear_sample(images, y, x):
    """Sample ``images`` (B, H, W, C) at float coordinates ``y``, ``x`` (B, H, W); zeros outside."""
    import tensorflow as tf

    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    y0, x0 = tf.floor(y), tf.floor(x)
    wy, wx = (y - y0)[..., None], (x - x0)[..., None]
    y0, x0 = tf.cast(y0, tf.int32), tf.cast(x0, tf.int32)
    batch = tf.broadcast_to(tf.range(b)[:, None, None], tf.shape(y0))

    def at(yy, xx):
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        idx = tf.stack([batch, tf.clip_by_value(yy, 0, h - 1), tf.clip_by_value(xx, 0, w - 1)], axis=-1)
        return tf.gather_nd(images, idx) * tf.cast(inside, images.dtype)[..., None]

    top = at(y0, x0) * (1 - wx) + at(y0, x0 + 1) * wx
    bottom = at(y0 + 1, x0) * (1 - wx) + at(y0 + 1, x0 + 1) * wx
    return top * (1 - wy) + bottom * wy
