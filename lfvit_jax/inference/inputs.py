"""User inputs for prediction (image files, folders of them, .npz arrays of images; local or gs://)
turned into the model's evaluation view. Images become 8-bit 'L' or 'RGB' first: EXIF orientation
applied, 16/32-bit samples scaled (not clipped), palettes expanded, transparency over white. .npz
arrays must already be the evaluation view, normalized as in training: ((pixel / 255) - mean) / std.
"""
import io
import math
import os
import zipfile
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

from lfvit_jax.io import storage
from lfvit_jax.data import augment

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
MAX_PIXELS = 64_000_000  # 8000 x 8000: 192 MB decoded
# Above this many pixels the resized image is never made: the crop's box is resized directly.
MAX_RESIZED_PIXELS = 4_000_000


class Inputs(NamedTuple):
    files: list  # image files and .npz files to read, in order
    ignored: list  # files inside the given folders that are not images (named to the user)


def list_inputs(paths):
    """Expands folders (recursively, sorted) into their image files; keeps files and .npz as
    given. Already an `Inputs`: returned as it is."""
    if isinstance(paths, Inputs):
        return paths
    files, ignored = [], []
    for path in paths:
        path = os.fspath(path)
        folder = storage.path(path)
        if folder.is_dir():
            # Sorted by path below the folder, named as given (a relative path stays relative).
            before = len(files)
            for f in storage.files(folder):
                image = f.lower().endswith(IMAGE_EXTENSIONS)
                (files if image else ignored).append(f"{path.rstrip('/')}/{f}")
            if len(files) == before:
                raise ValueError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) under {path}.")
        elif folder.exists():
            files.append(path)
        else:
            raise ValueError(f"Input {path} does not exist.")
    return Inputs(files, ignored)


def item_name(path, index):
    """The name of item `index` read from `path`: the path itself, or `path[index]` for .npz."""
    return f"{path}[{index}]" if path.endswith(".npz") else path


def read_items(paths, data_cfg, size):
    """Yields (name, image (S, S, 3) float32 or None, error message or None)."""
    for path in paths:
        if path.endswith(".npz"):
            yield from read_npz(path, data_cfg, size)
            continue
        try:
            img = load_image(path)
        except ValueError as e:
            yield path, None, str(e)
            continue
        yield path, preprocess(img, data_cfg, size), None


def _local_or_bytes(path):
    """A local path as it is (errors then name it), a URL's contents read into memory."""
    return io.BytesIO(storage.path(path).read_bytes()) if storage.is_remote(path) else path


def load_image(path):
    """An image file as a PIL image in mode 'L' or 'RGB'; ValueError naming what is wrong."""
    try:
        img = Image.open(_local_or_bytes(path))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"unreadable image: {e}") from None
    with img:
        pixels = img.width * img.height
        if pixels > MAX_PIXELS:
            raise ValueError(f"the image is {img.width}x{img.height} = {pixels:,} pixels, more "
                             f"than the {MAX_PIXELS:,} an input may have; downscale it first")
        try:
            img.load()
            oriented = ImageOps.exif_transpose(img)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ValueError(f"unreadable image: {e}") from None
        return to_8bit(oriented if oriented is not img else img.copy())


def to_8bit(img):
    """PIL image of any mode -> 'L' or 'RGB', 8 bits per sample."""
    if img.mode in ("L", "RGB"):
        return img
    if img.mode == "1":
        return img.convert("L")
    if img.mode.startswith("I") or img.mode == "F":
        return Image.fromarray(_scaled_to_8bit(img), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img.convert("RGBA")).convert("RGB")
    return img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX


def _scaled_to_8bit(img):
    """16/32-bit integer or float greyscale samples -> uint8 by their format's full range (PNG
    and TIFF store 16 bits; floats are taken as [0, 1])."""
    x = np.asarray(img)
    if img.mode == "F":
        if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise ValueError("a floating-point image must hold values in [0, 1]; this one "
                             f"holds [{np.nanmin(x):g}, {np.nanmax(x):g}]")
        return np.round(x * 255).astype(np.uint8)
    x = x.astype(np.float64)
    top = 65535.0 if x.max() <= 65535 else float(np.iinfo(np.int32).max)
    return np.round(np.clip(x, 0, top) * (255.0 / top)).astype(np.uint8)


def read_npz(path, data_cfg, size):
    """Yields (name, image, error) per image of a .npz (a file-level error once)."""
    wanted = f"expected a float32 'images' array (N, {size}, {size}, 3)"
    try:
        f = np.load(_local_or_bytes(path), allow_pickle=False)
        files = f.files
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        yield path, None, f"not a readable .npz file ({type(e).__name__}); {wanted}"
        return
    with f:
        if "images" not in files:
            yield path, None, f"no 'images' array in the .npz (it holds {files}); {wanted}"
            return
        try:
            images = f["images"]
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            reason = ("'images' holds Python objects, not numbers" if "allow_pickle" in str(e)
                      else f"'images' cannot be read ({e})")
            yield path, None, f"{reason}; {wanted}"
            return
    expected = (f"expected (N, {size}, {size}, 3) float32 normalized as in training: "
                f"(pixel / 255 - mean) / std, mean {tuple(data_cfg.mean)}, std "
                f"{tuple(data_cfg.std)}")
    if images.ndim != 4 or images.shape[1:] != (size, size, 3):
        yield path, None, f"'images' has shape {images.shape}; {expected}"
        return
    if not np.issubdtype(images.dtype, np.floating):
        yield path, None, (f"'images' is {images.dtype}; {expected} (or give the images as "
                           "files)")
        return
    # Bounds of (pixel / 255 - mean) / std for pixels in [0, 255], with a little slack.
    mean, std = np.asarray(data_cfg.mean, np.float32), np.asarray(data_cfg.std, np.float32)
    low, high = (0 - mean) / std - 1e-3, (1 - mean) / std + 1e-3
    for i, img in enumerate(images.astype(np.float32)):
        name = item_name(path, i)
        if not np.isfinite(img).all():
            yield name, None, f"the image holds NaN or inf values; {expected}"
        elif (img < low).any() or (img > high).any():
            yield name, None, (f"values in [{img.min():.3g}, {img.max():.3g}] are outside the "
                               f"normalized range [{low.min():.3g}, {high.max():.3g}]; "
                               f"{expected}")
        else:
            yield name, img, None


def preprocess(img, data_cfg, size):
    """PIL image -> the evaluation view: (size, size, 3) float32, normalized as in training."""
    img = resize_center_crop(img, size, data_cfg.crop_pct, data_cfg.interpolation)
    x = augment.normalize(img, data_cfg.mean, data_cfg.std)
    return np.broadcast_to(x, (size, size, 3)).astype(np.float32)


def resize_center_crop(img, size, crop_pct, interpolation):
    """`augment.resize_center_crop`, but an image whose resized copy would exceed
    MAX_RESIZED_PIXELS (a long strip) has only the crop's box resized: the same view, rounded."""
    short = int(math.floor(size / crop_pct))
    scale = short / min(img.width, img.height)
    new_w, new_h = int(img.width * scale), int(img.height * scale)
    if new_w * new_h <= MAX_RESIZED_PIXELS:
        return augment.resize_center_crop(img, size, crop_pct, interpolation)[0]
    if img.width <= img.height:
        new_w, new_h = short, int(short * img.height / img.width)
    else:
        new_w, new_h = int(short * img.width / img.height), short
    sy, sx = img.height / new_h, img.width / new_w
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return img.resize((size, size), augment.resample_filter(interpolation), box=box)
