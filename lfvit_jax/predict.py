"""Batch prediction with early exit: image files, folders of them, or an .npz of images.

Writes `predictions.jsonl` (one line per image: class, confidence, the deciding stage, the region
as a pixel box of the model's input view, the refined coarse tokens) and `predictions.npz` (final
and localization logits, exited, region). Unreadable files are reported and skipped. With
`overlays_dir`, one PNG per image shows the region and the refined tokens over the input view.
"""
import collections
import json
import logging
import os

import numpy as np

from lfvit_jax import evaluate, plotting
from lfvit_jax.data import augment
from lfvit_jax.data.pipeline import decode
from lfvit_jax.inference import EarlyExitPredictor

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def list_inputs(paths):
    """Expands folders (recursively, sorted) into image files; keeps files and .npz as given."""
    out = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(os.path.join(root, f) for root, _, files in os.walk(path)
                           for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise ValueError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) under {path}.")
            out += found
        elif os.path.exists(path):
            out.append(path)
        else:
            raise ValueError(f"Input {path} does not exist.")
    return out


def read_items(paths, data_cfg, size):
    """Yields (name, image (S, S, 3) float32 or None, error message or None)."""
    for path in paths:
        if path.endswith(".npz"):
            with np.load(path) as f:
                if "images" not in f.files:
                    yield path, None, "no 'images' array in the .npz"
                    continue
                images = f["images"]
            if images.ndim != 4 or images.shape[1:] != (size, size, 3):
                yield path, None, (f"'images' has shape {images.shape}; expected (N, {size}, "
                                   f"{size}, 3), normalized float32")
                continue
            for i, img in enumerate(images.astype(np.float32)):
                yield f"{path}[{i}]", img, None
            continue
        with open(path, "rb") as fh:
            data = fh.read()
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


def region_box(region, model):
    """Window index -> [ymin, xmin, ymax, xmax] pixels of the full-resolution input, max exclusive."""
    return evaluate.region_boxes(np.asarray(region), model.h1, model.region_size,
                                 model.patch).tolist()


def overlay_name(index, name):
    """A file name per prediction: its position (names may repeat across folders), then the stem
    (`images.npz[3]` -> `images_3`)."""
    name, _, item = name.rstrip("]").rpartition("[") if name.endswith("]") else (name, "", "")
    stem = os.path.splitext(os.path.basename(name))[0] + (f"_{item}" if item else "")
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem)
    return f"{index:05d}_{stem}.png"


def save_overlay(path, image, record, model, data_cfg):
    fig = plotting.new_figure(3, 3.3)
    kept = plotting.fine_patches(np.asarray(record["kept_tokens"]), model.h1)
    title = (f"class {record['class']} ({record['confidence']:.2f}), stage {record['stage']}\n"
             f"localization {record['loc_class']} ({record['loc_confidence']:.2f})")
    plotting.draw_region_and_tokens(fig.add_subplot(), plotting.to_display(
        image, data_cfg.mean, data_cfg.std), record["region_box"], kept, model.patch, title)
    fig.savefig(path)


def predict(model, variables, inputs, data_cfg, out_dir, threshold, batch_size=32,
            sharding=None, progress=True, overlays_dir=None):
    """Runs the compacted early-exit path, streaming, over `inputs`; returns a summary dict. With
    `overlays_dir`, writes one PNG per image (region, refined tokens, prediction)."""
    from tqdm import tqdm

    files = list_inputs(inputs)
    os.makedirs(out_dir, exist_ok=True)
    if overlays_dir:
        os.makedirs(overlays_dir, exist_ok=True)
    predictor = EarlyExitPredictor(model, variables, batch_size, sharding=sharding)
    size = model.img_size
    records, skipped, in_flight = [], [], collections.deque()  # (name, image) per queued batch
    arrays = {"logits": [], "loc_logits": [], "exited": [], "region": []}

    def batches(bar):
        """Full batches of the readable inputs (the last one padded), for the predictor's stream."""
        pending = []
        for name, img, error in read_items(files, data_cfg, size):
            bar.update(1)
            if error:
                logging.warning("Skipping %s: %s", name, error)
                skipped.append({"file": name, "error": error})
                continue
            pending.append((name, img))
            if len(pending) == batch_size:
                yield stack(pending)
                pending = []
        if pending:
            yield stack(pending)

    def stack(pending):
        in_flight.append(pending)
        batch = np.zeros((batch_size, size, size, 3), np.float32)
        batch[:len(pending)] = [img for _, img in pending]
        return batch

    with tqdm(unit="img", disable=not progress, desc="predict") as bar:
        # The stream queues hard images across batches, so the focus stage runs on full buckets.
        for out in predictor.stream(batches(bar), threshold):
            for k, (name, img) in enumerate(in_flight.popleft()):
                probs = _softmax(out["logits"][k])
                records.append({
                    "file": name, "class": int(probs.argmax()), "confidence": float(probs.max()),
                    "stage": 1 if out["exited"][k] else 2,
                    "loc_class": int(out["loc_logits"][k].argmax()),
                    "loc_confidence": float(out["confidence"][k]),
                    "region_box": region_box(out["region"][k], model),
                    "kept_tokens": out["coarse_index"][k].tolist()})
                for key in arrays:
                    arrays[key].append(out[key][k])
                if overlays_dir:
                    save_overlay(os.path.join(overlays_dir, overlay_name(len(records) - 1, name)),
                                 img, records[-1], model, data_cfg)

    with open(os.path.join(out_dir, "predictions.jsonl"), "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    np.savez(os.path.join(out_dir, "predictions.npz"), files=np.array([r["file"] for r in records]),
             **{k: np.array(v) for k, v in arrays.items()})
    summary = {"predicted": len(records), "skipped": len(skipped),
               "exited_fraction": float(np.mean([r["stage"] == 1 for r in records])) if records else 0.0,
               "threshold": threshold, "out_dir": out_dir}
    if overlays_dir:
        summary["overlays_dir"] = overlays_dir
    if skipped:
        summary["skipped_files"] = skipped
    return summary


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def predict_checkpoint(config, workdir, inputs, threshold, batch_size, out_dir=None,
                       overlays_dir=None):
    """`main.py --mode=predict`: the workdir's checkpoint (or config.resume / init_from)."""
    import jax

    from lfvit_jax import parallel, train

    setup, state, origin = train.restore_for_inference(config, workdir)
    out_dir = out_dir or os.path.join(workdir, "predictions")
    print(f"Predicting with {origin}", flush=True)
    summary = predict(setup.model, {"params": setup.eval_params(state)}, inputs, config.data,
                      out_dir, threshold, batch_size, sharding=parallel.batch_sharding(setup.mesh),
                      progress=jax.process_index() == 0,
                      overlays_dir=overlays_dir if jax.process_index() == 0 else None)
    print(json.dumps(summary), flush=True)
    return summary
