"""Batch prediction with early exit over image files, folders of them, or .npz arrays of images,
into `predictions.jsonl` (one strict-JSON line per image), `predictions.npz` and optional region
overlays (formats: README.md, "Predict"), with one console line per image. Unreadable files are
reported and skipped; images whose outputs are not finite get an "error" instead of a class. The
output folders are made and proven writable before any compute, and removed if the run fails.
"""
import collections
import contextlib
import io
import itertools
import json
import logging
import os
import sys
import time

import jax
import numpy as np
from tqdm import tqdm

from lfvit_jax import tasks
from lfvit_jax.core import parallel
from lfvit_jax.data.defaults import class_names
from lfvit_jax.inference import predictors
from lfvit_jax.inference.inputs import item_name, list_inputs, read_items
from lfvit_jax.io import rundir
from lfvit_jax.weights import loading

SAVE_LOGITS = ("final", "all")
# Where JAX reports the time it spends making executables (the last one includes reading them
# from the persistent compilation cache, and counts them).
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
log = logging.getLogger(__name__)


def overlay_name(index, name):
    """A file name per prediction: its position (names may repeat across folders), then the stem
    (`images.npz[3]` -> `images_3`)."""
    name, _, item = name.rstrip("]").rpartition("[") if name.endswith("]") else (name, "", "")
    stem = os.path.splitext(os.path.basename(name))[0] + (f"_{item}" if item else "")
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem)
    return f"{index:05d}_{stem}.png"


def save_overlay(path, image, record, grid, data_cfg):
    # Imported here: matplotlib costs about a second, and only overlays need it.
    from lfvit_jax.evaluation import plotting, reports
    fig = plotting.new_figure(3, 3.3)
    title = (f"class {record['class']} ({record['confidence']:.2f}), stage {record['stage']}\n"
             f"localization {record['loc_class']} ({record['loc_confidence']:.2f})")
    plotting.draw_region_and_tokens(
        fig.add_subplot(), plotting.to_display(image, data_cfg.mean, data_cfg.std),
        record["region_box"], grid.fine_children(np.asarray(record["kept_tokens"])), grid.patch,
        title)
    reports.save_figure(fig, path)


def _record(task, name, out, k, names, wnids):
    """One image's line of predictions.jsonl: the task's fields, or an error."""
    finite = all(np.isfinite(v[k]).all() for key, v in out.items() if key.endswith("logits"))
    if not finite:
        return {"file": name, "class": None, "error": "the model's outputs are not finite (NaN "
                "or inf): check that the input is a normalized image and the weights are intact"}
    record = {"file": name, **task.record(out, k)}
    if names is not None:
        record["class_name"] = names[record["class"]]
    if wnids is not None:
        record["wnid"] = wnids[record["class"]]
    return record


def console_line(record):
    """An image's prediction as the console shows it: file, class, confidence, deciding stage."""
    if "error" in record:
        return f"{record['file']}  error: {record['error']}"
    label = record.get("class_name", f"class {record['class']}").split(",")[0]
    label += f" ({record['wnid']})" if "wnid" in record else ""
    stage = f"  stage {record['stage']}" if "stage" in record else ""
    return f"{record['file']}  {label}  {record['confidence']:.3f}{stage}"


@contextlib.contextmanager
def compile_clock():
    """{'seconds', 'executables'}: what JAX spends making executables inside the block."""
    spent = {"seconds": 0.0, "executables": 0}

    def listen(event, seconds, **kwargs):
        if event in COMPILE_EVENTS:
            spent["seconds"] += seconds
            spent["executables"] += event == COMPILE_EVENTS[-1]
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield spent
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def predict(model, variables, inputs, data_cfg, out_dir, threshold, batch_size=32,
            sharding=None, progress=True, overlays_dir=None, save_logits="final",
            class_names=None, wnids=None, quiet=True, overwrite=False):
    """Classifies `inputs` (paths, or `list_inputs`'s result) into `out_dir` and returns a
    summary; unless `quiet`, prints a line per image. With P processes (the same call in each),
    process p reads the blocks p, p + P, ... of batch_size / P files, so a global batch holds the
    same images as in one process; process 0 writes the gathered outputs in order."""
    if save_logits not in SAVE_LOGITS:
        raise ValueError(f"save_logits={save_logits!r} is not one of {SAVE_LOGITS}.")
    processes, first = jax.process_count(), jax.process_index() == 0
    if overlays_dir and processes > 1:
        raise ValueError("Overlays are written by one process: run predict with "
                         "--save_overlays in a single process.")
    if batch_size % processes:
        raise ValueError(f"Batch size {batch_size} must be a multiple of the {processes} "
                         "processes.")
    task = tasks.for_model(model)
    files, ignored = list_inputs(inputs)
    if ignored and first:
        log.warning("Ignored %s in the input folders that are not images (.npz files are read "
                    "when given by name): %s", _count(len(ignored), "file"), ", ".join(ignored))
    devices = 1 if sharding is None else sharding.mesh.size
    if not any(f.endswith(".npz") for f in files):  # a few images: no batch of padding
        batch_size = min(batch_size, -(-len(files) // devices) * devices)
    size, grid, share = model.img_size, task.grid, batch_size // processes
    mine = [i for i in range(len(files)) if (i // share) % processes == jax.process_index()]
    records, keys, skipped = [], [], []  # keys: (file index, item index) per record
    in_flight = collections.deque()  # per queued batch: its global keys, this process's images
    arrays = collections.defaultdict(list)

    def items(bar):
        """(key, image) of this process's readable inputs."""
        for i in mine:
            for j, (name, img, error) in enumerate(read_items([files[i]], data_cfg, size)):
                bar.total += j > 0  # an .npz of several images: the bar's total grows
                if error:
                    bar.update(1)
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

    with contextlib.ExitStack() as stack:
        out_dir = stack.enter_context(rundir.output_folder(out_dir, overwrite))
        if overlays_dir:
            overlays_dir = stack.enter_context(rundir.output_folder(overlays_dir, overwrite))
        predictor = predictors.for_task(task, variables, batch_size, sharding)
        start = time.perf_counter()
        compiling = stack.enter_context(compile_clock())
        bar = stack.enter_context(tqdm(total=len(files), unit="img", desc="predict",  # None:
                                       disable=None if progress and first else True))  # a tty
        for out in outputs(batches(bar)):
            global_keys, images = in_flight.popleft()
            for k, (i, j) in enumerate(global_keys):
                if i < 0:
                    continue
                name = item_name(files[i], j)
                records.append(_record(task, name, out, k, class_names, wnids))
                keys.append((i, j))
                for key in ("logits", "loc_logits", "focus_logits", "exited", "region"):
                    if key in out:
                        arrays[key].append(out[key][k])
                if overlays_dir and grid is not None and "error" not in records[-1]:
                    save_overlay(overlays_dir / overlay_name(len(records) - 1, name),
                                 images[k], records[-1], grid, data_cfg)
                if first and not quiet:
                    bar.write(console_line(records[-1]), file=sys.stdout)
                bar.update(1)
        seconds = time.perf_counter() - start
        order = sorted(range(len(keys)), key=keys.__getitem__)  # the inputs' order
        records = [records[n] for n in order]
        if first:
            _write(out_dir, records, {key: [values[n] for n in order]
                                      for key, values in arrays.items()})
    skipped = [entry for *_, entry in sorted(sum(parallel.gather_json(skipped), []),
                                             key=lambda e: e[:2])]
    classified = [r for r in records if "error" not in r]
    summary = {"files": len(files), "images": len(records) + len(skipped),
               "predicted": len(classified), "skipped": len(skipped),
               "nonfinite": len(records) - len(classified),
               "skipped_by_reason": collections.Counter(_reason(e["file"]) for e in skipped),
               "seconds": seconds, "compile_seconds": compiling["seconds"],
               "executables": compiling["executables"], "threshold": threshold,
               "img_per_sec": len(records) / max(seconds - compiling["seconds"], 1e-9),
               "out_dir": os.fspath(out_dir)}
    if grid is not None:  # an early-exit kind: the fraction decided by localization
        summary["exited_fraction"] = float(np.mean([r["stage"] == 1 for r in classified] or 0))
    for key, value in (("overlays_dir", overlays_dir and os.fspath(overlays_dir)),
                       ("skipped_files", skipped), ("ignored_files", ignored)):
        if value:
            summary[key] = value
    return summary


def _reason(name):
    if name.endswith(".npz"):
        return "unusable .npz file"
    return "rejected .npz image" if name.endswith("]") else "unreadable image"


def _count(n, noun):
    return f"{n} {noun}{'' if n == 1 else 's'}"


def describe(summary):
    """The run in one line, as the console shows it."""
    reasons = "".join(f"{': ' if i == 0 else ', '}{_count(n, why)}" for i, (why, n) in
                      enumerate(summary["skipped_by_reason"].items()))
    line = (f"Predicted {summary['predicted']} of {_count(summary['images'], 'image')} in "
            f"{_count(summary['files'], 'file')} ({summary['skipped']} skipped{reasons}; "
            f"{summary['nonfinite']} with non-finite outputs)")
    if "exited_fraction" in summary and summary["predicted"]:
        line += f", {100 * summary['exited_fraction']:.1f}% exited after localization"
    return (line + f"; {summary['img_per_sec']:.1f} img/s after {summary['compile_seconds']:.1f}"
            f" s of compilation ({_count(summary['executables'], 'executable')}); results in "
            f"{summary['out_dir']}")


def _write(out_dir, records, arrays):
    (out_dir / "predictions.jsonl").write_text(
        "".join(json.dumps(r, allow_nan=False) + "\n" for r in records))
    buffer = io.BytesIO()
    np.savez(buffer, files=np.array([r["file"] for r in records]),
             **{k: np.array(v) for k, v in arrays.items()})
    (out_dir / "predictions.npz").write_bytes(buffer.getvalue())


def predict_checkpoint(config, workdir, inputs, threshold, batch_size, output=None,
                       overwrite=False, save_logits="final", overlays_dir=None, which="latest",
                       quiet=False):
    """`predict` with the weights `loading.load` finds (no dataset is opened), printing a line
    per image (unless `quiet`) and the summary. The inputs and the output folder are checked
    before the weights are read."""
    inputs = list_inputs(inputs)
    out_dir = output or rundir.fresh_dir(workdir)
    with rundir.output_folder(out_dir, overwrite) as out_dir:
        mesh = parallel.make_mesh()
        loaded = loading.load(config, workdir, which, mesh)
        if jax.process_index() == 0:
            print(f"Predicting with {loaded.origin} into {out_dir}", flush=True)
        names, wnids = class_names(config.data)
        if names is not None and len(names) != loaded.task.model.num_classes:
            names = wnids = None  # the dataset's names do not describe this head
        summary = predict(loaded.task.model, {"params": loaded.params}, inputs, config.data,
                          out_dir, threshold, batch_size, sharding=parallel.batch_sharding(mesh),
                          progress=True, overlays_dir=overlays_dir, save_logits=save_logits,
                          class_names=names, wnids=wnids, quiet=quiet, overwrite=True)
    if jax.process_index() == 0:
        print(describe(summary))
        print(json.dumps(summary), flush=True)
    return summary
