"""The localization stage's input: PyTorch's `interpolate(mode='bilinear', align_corners=True)`,
weights in float32 as PyTorch computes them. `jax.image.resize` samples at half-pixel centres and
antialiases: a different image, which changes the region LF-ViT picks.
"""
import jax.numpy as jnp
import numpy as np


def _axis_weights(n_in, n_out):
    scale = np.float32(n_in - 1) / np.float32(max(n_out - 1, 1))
    src = scale * np.arange(n_out, dtype=np.float32)
    i0 = np.floor(src).astype(np.int32)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    w0 = (np.float32(1) - w1).astype(np.float32)
    return i0, i1, w0, w1


def _resize_axis(x, n_out, axis):
    i0, i1, w0, w1 = _axis_weights(x.shape[axis], n_out)
    shape = [1] * x.ndim
    shape[axis] = n_out
    return (jnp.take(x, i0, axis=axis) * w0.reshape(shape)
            + jnp.take(x, i1, axis=axis) * w1.reshape(shape))


def resize_align_corners(images, size):
    """(B, H, W, C) -> (B, size, size, C), bilinear, align_corners=True, no antialiasing."""
    return _resize_axis(_resize_axis(images, size, 1), size, 2)
