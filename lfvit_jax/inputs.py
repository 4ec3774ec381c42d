"""User inputs for prediction: image files, folders of them, and .npz arrays of images, turned into
the model's evaluation view. Local paths or URLs (gs://)."""
import io
import os

import numpy as np

from lfvit_jax import storage
from lfvit_jax.data import augment
from lfvit_jax.data.pipeline import decode

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def list_inputs(paths):
    """Expands folders (recursively, sorted) into image files; keeps files and .npz as given."""
    out = []
    for path in paths:
        path = os.fspath(path)
        folder = storage.path(path)
        if folder.is_dir():
            # Sorted by path below the folder, named as given (a relative path stays relative).
            found = [f"{path.rstrip('/')}/{f}" for f in storage.files(folder)
                     if f.lower().endswith(IMAGE_EXTENSIONS)]
            if not found:
                raise ValueError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) under {path}.")
            out += found
        elif folder.exists():
            out.append(path)
        else:
            raise ValueError(f"Input {path} does not exist.")
    return out


def item_name(path, index):
    """The name of item `index` read from `path`: the path itself, or `path[index]` for .npz."""
    return f"{path}[{index}]" if path.endswith(".npz") else path


def read_items(paths, data_cfg, size):
    """Yields (name, image (S, S, 3) float32 or None, error message or None)."""
    for path in paths:
        if path.endswith(".npz"):
            with np.load(io.BytesIO(storage.path(path).read_bytes())) as f:
                if "images" not in f.files:
                    yield path, None, "no 'images' array in the .npz"
                    continue
                images = f["images"]
            if images.ndim != 4 or images.shape[1:] != (size, size, 3):
                yield path, None, (f"'images' has shape {images.shape}; expected (N, {size}, "
                                   f"{size}, 3), normalized float32")
                continue
            for i, img in enumerate(images.astype(np.float32)):
                yield item_name(path, i), img, None
            continue
        data = storage.path(path).read_bytes()
        try:
            img = decode(data, path, on_corrupt="error")
        except ValueError as e:
            yield path, None, f"unreadable image: {e.__cause__}"
            continue
        yield path, preprocess(img, data_cfg, size), None


def preprocess(img, data_cfg, size):
    """PIL image -> the evaluation view: (size, size, 3) float32, normalized as in training."""
    img, _ = augment.resize_center_crop(img, size, data_cfg.crop_pct, data_cfg.interpolation)
    x = augment.normalize(img, data_cfg.mean, data_cfg.std)
    return np.broadcast_to(x, (size, size, 3)).astype(np.float32)
