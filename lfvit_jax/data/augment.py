"""Per-image and per-batch augmentation in numpy/Pillow, following DeiT's timm recipe. Every random
choice draws from an explicit `np.random.Generator`, so the grain pipeline is deterministic given
its seed. Images are PIL images until `normalize`, float32 HWC after.
"""
import math

import numpy as np
from PIL import Image, ImageEnhance

from lfvit_jax.core.errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "nearest": Image.Resampling.NEAREST}


def resample_filter(name):
    if name not in _RESAMPLE:
        raise UsageError(f"Unknown interpolation {name!r}; use one of {sorted(_RESAMPLE)}.")
    return _RESAMPLE[name]


def random_resized_crop_box(rng, height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """(top, left, h, w) as torchvision's RandomResizedCrop draws it: ten tries at a random area
    fraction in `scale` and log-uniform aspect ratio in `ratio`, else a centred clamped box."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(img, rng, size, interpolation="bicubic", scale=(0.08, 1.0)):
    top, left, h, w = random_resized_crop_box(rng, img.height, img.width, scale)
    # Crop, then resize (not resize with a box): the filter must not reach outside the crop.
    return img.crop((left, top, left + w, top + h)).resize((size, size),
                                                          resample_filter(interpolation))


def resize_center_crop(img, size, crop_pct, interpolation="bicubic"):
    """Evaluation view: shorter side to floor(size / crop_pct) (the longer one truncated, as in
    torchvision), then the centred size x size. Also returns (sy, sx, top, left), which maps input
    pixels (y, x) to output ones (y * sy - top, x * sx - left), to carry bounding boxes along."""
    short = int(math.floor(size / crop_pct))
    if img.width <= img.height:
        new_w, new_h = short, int(short * img.height / img.width)
    else:
        new_w, new_h = int(short * img.width / img.height), short
    scale_y, scale_x = new_h / img.height, new_w / img.width
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), resample_filter(interpolation))
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    return img, (scale_y, scale_x, top, left)


def color_jitter(img, rng, strength):
    """Brightness, contrast and saturation each scaled by U(1-s, 1+s), in random order."""
    enhancers = [ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color]
    for i in rng.permutation(len(enhancers)):
        factor = rng.uniform(max(0.0, 1 - strength), 1 + strength)
        img = enhancers[i](img).enhance(factor)
    return img


def normalize(img, mean, std):
    """uint8 PIL image -> float32 HWC with 3 channels; grayscale is replicated to RGB."""
    x = np.asarray(img)
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    scale, offset = 1.0 / (255.0 * std), mean / std  # float32: so is every product below
    # A channel at a time: broadcasting over a last axis of 3 ran numpy 2x slower.
    out = np.empty(x.shape[:2] + (3,), np.float32)
    for c in range(3):
        np.multiply(x if x.ndim == 2 else x[..., c], scale[c], out=out[..., c])
        out[..., c] -= offset[c]
    return out


def random_erasing(x, rng, prob, scale=(0.02, 1 / 3), ratio=0.3):
    """timm RandomErasing (pixel mode, one box): N(0, 1) noise in a random box of `x`, in place."""
    if prob <= 0 or rng.uniform() >= prob:
        return x
    height, width, channels = x.shape
    log_ratio = (math.log(ratio), math.log(1 / ratio))
    for _ in range(10):
        target_area = height * width * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        h = int(round(math.sqrt(target_area * aspect)))
        w = int(round(math.sqrt(target_area / aspect)))
        if h < height and w < width:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            x[top:top + h, left:left + w] = rng.standard_normal((h, w, channels), np.float32)
            break
    return x


def cutmix_box(rng, height, width, lam):
    """Box of area about (1 - lam) * H * W with a uniform centre, clipped to the image."""
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    y0, y1 = np.clip([cy - ch // 2, cy + ch // 2], 0, height)
    x0, x1 = np.clip([cx - cw // 2, cx + cw // 2], 0, width)
    return int(y0), int(y1), int(x0), int(x1)


def mixup_cutmix(images, labels, rng, *, num_classes, mixup, cutmix, switch_prob, smoothing):
    """timm Mixup in 'batch' mode: one lam per batch, each example paired with its mirror; returns
    (images mixed in place, soft targets). With both alphas positive, cutmix is chosen with
    probability `switch_prob`; its lam is corrected to the clipped box area."""
    if len(images) % 2:
        raise UsageError(f"Mixup/cutmix pairs each example with its mirror in the batch, so the "
                         f"per-process batch must be even; got {len(images)}.")
    off = smoothing / num_classes  # label smoothing
    targets = np.full((len(labels), num_classes), off, np.float32)
    targets[np.arange(len(labels)), labels] = 1.0 - smoothing + off
    if mixup <= 0 and cutmix <= 0:
        return images, targets
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.uniform() < switch_prob)
    lam = float(rng.beta(cutmix, cutmix) if use_cutmix else rng.beta(mixup, mixup))
    flipped = images[::-1].copy()
    if use_cutmix:
        height, width = images.shape[1:3]
        y0, y1, x0, x1 = cutmix_box(rng, height, width, lam)
        images[:, y0:y1, x0:x1] = flipped[:, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
    else:
        images *= lam
        images += (1.0 - lam) * flipped
    return images, lam * targets + (1.0 - lam) * targets[::-1]
