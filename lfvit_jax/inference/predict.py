"""Batch prediction with early exit over image files, folders of them, or .npz arrays of images,
into `predictions.jsonl` (one strict-JSON line per image), `predictions.npz` and optional region
overlays (formats: README.md, "Predict"). Unreadable files are reported and skipped; images whose
outputs are not finite get an "error" instead of a class.
"""
import collections
import io
import itertools
import json
import logging
import os
import time

import jax
import numpy as np
from etils import epath

from lfvit_jax import tasks
from lfvit_jax.core import parallel
from lfvit_jax.evaluation import plotting, reports
from lfvit_jax.inference import predictors
from lfvit_jax.inference.inputs import item_name, list_inputs, read_items
from lfvit_jax.io import rundir
from lfvit_jax.weights import loading

SAVE_LOGITS = ("final", "all")
log = logging.getLogger(__name__)


def overlay_name(index, name):
    """A file name per prediction: its position (names may repeat across folders), then the stem
    (`images.npz[3]` -> `images_3`)."""
    name, _, item = name.rstrip("]").rpartition("[") if name.endswith("]") else (name, "", "")
    stem = os.path.splitext(os.path.basename(name))[0] + (f"_{item}" if item else "")
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem)
    return f"{index:05d}_{stem}.png"


def save_overlay(path, image, record, grid, data_cfg):
    fig = plotting.new_figure(3, 3.3)
    title = (f"class {record['class']} ({record['confidence']:.2f}), stage {record['stage']}\n"
             f"localization {record['loc_class']} ({record['loc_confidence']:.2f})")
    plotting.draw_region_and_tokens(
        fig.add_subplot(), plotting.to_display(image, data_cfg.mean, data_cfg.std),
        record["region_box"], grid.fine_children(np.asarray(record["kept_tokens"])), grid.patch,
        title)
    reports.save_figure(fig, path)


def _record(task, name, out, k, class_names):
    """One image's line of predictions.jsonl: the task's fields, or an error."""
    finite = all(np.isfinite(v[k]).all() for key, v in out.items() if key.endswith("logits"))
    if not finite:
        return {"file": name, "class": None, "error": "the model's outputs are not finite (NaN "
                "or inf): check that the input is a normalized image and the weights are intact"}
    record = {"file": name, **task.record(out, k)}
    if class_names is not None:
        record["class_name"] = class_names[record["class"]]
    return record


def predict(model, variables, inputs, data_cfg, out_dir, threshold, batch_size=32,
            sharding=None, progress=True, overlays_dir=None, save_logits="final",
            class_names=None):
    """Classifies `inputs` into `out_dir` and returns a summary. With P processes (the same call
    in each), process p reads the blocks p, p + P, ... of batch_size / P files, so a global batch
    holds the same images as in one process; process 0 writes the gathered outputs in order."""
    from tqdm import tqdm

    if save_logits not in SAVE_LOGITS:
        raise ValueError(f"save_logits={save_logits!r} is not one of {SAVE_LOGITS}.")
    processes = jax.process_count()
    if overlays_dir and processes > 1:
        raise ValueError("Overlays are written by one process: run predict with "
                         "--save_overlays in a single process.")
    if batch_size % processes:
        raise ValueError(f"Batch size {batch_size} must be a multiple of the {processes} "
                         "processes.")
    task = tasks.for_model(model)
    files = list_inputs(inputs)
    predictor = predictors.for_task(task, variables, batch_size, sharding)
    if overlays_dir:
        epath.Path(overlays_dir).mkdir(parents=True, exist_ok=True)
    size, grid, share = model.img_size, task.grid, batch_size // processes
    mine = [i for i in range(len(files)) if (i // share) % processes == jax.process_index()]
    records, keys, skipped = [], [], []  # keys: (file index, item index) per record
    in_flight = collections.deque()  # per queued batch: its global keys, this process's images
    arrays = collections.defaultdict(list)
    start = time.perf_counter()

    def items(bar):
        """(key, image) of this process's readable inputs."""
        for i in mine:
            for j, (name, img, error) in enumerate(read_items([files[i]], data_cfg, size)):
                bar.update(1)
                if error:
                    log.warning("Skipping %s: %s", name, error)
                    skipped.append([i, j, {"file": name, "error": error}])
                else:
                    yield (i, j), img

    def batches(bar):
        """This process's rows of each global batch (padded), until no process has any left."""
        readable = items(bar)
        while True:
            pending = list(itertools.islice(readable, share))
            local_keys = np.full((share, 2), -1, np.int64)
            for row, (key, _) in zip(local_keys, pending):
                row[:] = key
            global_keys = parallel.gather_rows(local_keys)
            if (global_keys[:, 0] < 0).all():
                return
            batch = np.zeros((share, size, size, 3), np.float32)
            for row, (_, img) in zip(batch, pending):
                row[:] = img
            in_flight.append((global_keys, [img for _, img in pending]))
            yield batch

    def outputs(batches):
        if save_logits == "final":  # hard images queue across batches: full focus buckets
            return predictor.stream(batches, threshold)
        return ({k: parallel.host_array(v) for k, v in predictor.masked(x, threshold).items()}
                for x in batches)

    with tqdm(unit="img", disable=not progress, desc="predict") as bar:
        for out in outputs(batches(bar)):
            global_keys, images = in_flight.popleft()
            for k, (i, j) in enumerate(global_keys):
                if i < 0:
                    continue
                name = item_name(files[i], j)
                records.append(_record(task, name, out, k, class_names))
                keys.append((i, j))
                for key in ("logits", "loc_logits", "focus_logits", "exited", "region"):
                    if key in out:
                        arrays[key].append(out[key][k])
                if overlays_dir and grid is not None and "error" not in records[-1]:
                    save_overlay(epath.Path(overlays_dir) / overlay_name(len(records) - 1, name),
                                 images[k], records[-1], grid, data_cfg)
    seconds = time.perf_counter() - start
    order = sorted(range(len(keys)), key=keys.__getitem__)  # the inputs' order
    records = [records[n] for n in order]
    arrays = {key: [values[n] for n in order] for key, values in arrays.items()}
    skipped = [entry for *_, entry in sorted(sum(parallel.gather_json(skipped), []),
                                             key=lambda e: e[:2])]
    classified = [r for r in records if "error" not in r]
    summary = {"images": len(files), "predicted": len(classified), "skipped": len(skipped),
               "nonfinite": len(records) - len(classified),
               "img_per_sec": len(records) / seconds if seconds > 0 else 0.0,
               "threshold": threshold, "out_dir": os.fspath(out_dir)}
    staged = [r["stage"] for r in classified if "stage" in r]  # early exit: which stage decided
    if staged:
        summary["exited_fraction"] = float(np.mean(np.equal(staged, 1)))
    if jax.process_index() == 0:
        _write(out_dir, records, arrays)
    if overlays_dir:
        summary["overlays_dir"] = os.fspath(overlays_dir)
    if skipped:
        summary["skipped_files"] = skipped
    return summary


def _write(out_dir, records, arrays):
    out_dir = epath.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "predictions.jsonl").write_text(
        "".join(json.dumps(r, allow_nan=False) + "\n" for r in records))
    buffer = io.BytesIO()
    np.savez(buffer, files=np.array([r["file"] for r in records]),
             **{k: np.array(v) for k, v in arrays.items()})
    (out_dir / "predictions.npz").write_bytes(buffer.getvalue())


def predict_checkpoint(config, workdir, inputs, threshold, batch_size, output=None,
                       overwrite=False, save_logits="final", overlays_dir=None, which="latest"):
    """`main.py --mode=predict`: the weights `loading.load` finds; no dataset is opened."""
    from lfvit_jax.data.pipeline import class_names

    mesh = parallel.make_mesh()
    loaded = loading.load(config, workdir, which, mesh)
    out_dir = epath.Path(output) if output else rundir.fresh_dir(workdir)
    rundir.check_output(out_dir, overwrite)
    if jax.process_index() == 0:
        print(f"Predicting with {loaded.origin} into {out_dir}", flush=True)
    names = class_names(config.data)
    if names is not None and len(names) != loaded.task.model.num_classes:
        names = None  # the dataset's names do not describe this head
    return predict(loaded.task.model, {"params": loaded.params}, inputs, config.data, out_dir,
                   threshold, batch_size, sharding=parallel.batch_sharding(mesh),
                   progress=jax.process_index() == 0, overlays_dir=overlays_dir,
                   save_logits=save_logits, class_names=names)
