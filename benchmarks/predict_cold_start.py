"""How long a fresh process takes to predict a few JPEGs with official-size weights, cold (an empty
compilation cache) and warm (the cache the cold run filled), and where the time goes.

Makes, once, random weights in the official release's layout (an .npz of the PyTorch names:
LF-ViT with a DeiT-S backbone, 224 px, m=5) and `--images` JPEGs of 500x375, then runs in turn
for `--rounds` rounds: `lfvit predict` (the command line, whole) and a process
that runs the same job through the library and reports its split (imports, loading, compile,
compute). Each round uses a new cache folder: its first run is cold, its second warm. Medians are
printed, then a JSON line.

  python benchmarks/predict_cold_start.py                  # 20 JPEGs, 3 rounds
  python benchmarks/predict_cold_start.py --rounds 5 --dir /tmp/cold_start
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

flags.DEFINE_string("dir", os.path.join(tempfile.gettempdir(), "lfvit_cold_start"),
                    "folder for the weights, the JPEGs and the runs")
flags.DEFINE_integer("images", 20, "JPEGs to classify")
flags.DEFINE_integer("rounds", 3, "rounds of a cold and a warm run each (medians reported)")
flags.DEFINE_list("child", None, "internal: WEIGHTS,JPEGS,OUT,CACHE of a library run")
FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
CONFIG = "lfvit_deit_s:res=224,m=5"


def make_inputs(folder, images):
    """weights.npz (official names, random values) and `images` JPEGs under `folder`."""
    import numpy as np
    from flax import traverse_util
    from PIL import Image

    from lfvit_jax import tasks
    from lfvit_jax.core.config_args import load_config
    from lfvit_jax.io.state_dict import to_flax

    weights = os.path.join(folder, "weights.npz")
    if not os.path.exists(weights):
        task = tasks.build(load_config(CONFIG).model)
        rng, sd = np.random.default_rng(0), {}
        for path, leaf in traverse_util.flatten_dict(task.abstract_params()).items():
            parts = []  # the PyTorch name: blocks_3 -> blocks.3, kernel/scale -> weight
            for part in path:
                head, _, index = part.rpartition("_")
                parts += [head, index] if index.isdigit() and head else [part]
            last = "weight" if parts[-1] in ("kernel", "scale") else parts[-1]
            shape = leaf.shape
            if parts[-1] == "kernel":  # Linear (out, in); conv OIHW
                shape = shape[::-1] if len(shape) == 2 else shape[3:1:-1] + shape[:2]
            value = (np.ones(shape, np.float32) if parts[-1] == "scale"
                     else 0.02 * rng.standard_normal(shape, dtype=np.float32))
            name = ".".join(parts[:-1] + [last])
            flax_path, flax_value = to_flax(name, value)
            assert flax_path == path and flax_value.shape == leaf.shape, name
            sd[name] = value
        np.savez(weights, **sd)
    jpegs = os.path.join(folder, "jpegs")
    if not os.path.isdir(jpegs) or len(os.listdir(jpegs)) != images:
        shutil.rmtree(jpegs, ignore_errors=True)
        os.makedirs(jpegs)
        rng = np.random.default_rng(1)
        y, x = np.mgrid[0:375, 0:500]
        for i in range(images):
            img = np.stack([(x * (i + 1)) % 256, (3 * y + 10 * i) % 256, (x + y) % 256], -1)
            img = np.clip(img + rng.integers(0, 40, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(os.path.join(jpegs, f"img{i:02d}.jpg"), quality=90)
    return weights, jpegs


def child(weights, jpegs, out, cache):
    """The job through the library, in this fresh process; prints its split as JSON."""
    start = time.perf_counter()
    from lfvit_jax.core import parallel
    from lfvit_jax.core.config_args import load_config
    from lfvit_jax.inference import predict
    from lfvit_jax.weights import loading
    imported = time.perf_counter()
    parallel.enable_compilation_cache(cache)
    config = load_config(CONFIG)
    config.init_from = weights
    loaded = loading.load(config, os.path.join(out, "no_run"))
    loaded_at = time.perf_counter()
    summary = predict.predict(loaded.task.model, {"params": loaded.params}, [jpegs], config.data,
                              os.path.join(out, "preds"), 0.76, 32, progress=False)
    print(json.dumps({"imports": imported - start, "loading": loaded_at - imported,
                      "compile": summary["compile_seconds"],
                      "compute": summary["seconds"] - summary["compile_seconds"],
                      "executables": summary["executables"],
                      "predict_total": time.perf_counter() - loaded_at}))


def timed(args, env):
    start = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return time.perf_counter() - start, out.stdout


def main(argv):
    del argv
    if FLAGS.child:
        return child(*FLAGS.child)
    os.makedirs(FLAGS.dir, exist_ok=True)
    weights, jpegs = make_inputs(FLAGS.dir, FLAGS.images)
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    runs = {f"{kind}_{temp}": [] for kind in ("cli", "library") for temp in ("cold", "warm")}
    splits = {k: [] for k in runs if k.startswith("library")}
    for r in range(FLAGS.rounds):
        for kind in ("cli", "library"):
            cache = tempfile.mkdtemp(prefix="jax_cache_", dir=FLAGS.dir)
            for temp in ("cold", "warm"):
                out = tempfile.mkdtemp(prefix="out_", dir=FLAGS.dir)
                if kind == "cli":
                    seconds, _ = timed(
                        [sys.executable, "-m", "lfvit_jax.cli.main", "predict",
                         f"--config={CONFIG}", f"--config.init_from={weights}",
                         f"--workdir={out}/no_run", f"--input={jpegs}", f"--output={out}/preds",
                         f"--compilation_cache={cache}", "--quiet"], env)
                else:
                    seconds, stdout = timed([sys.executable, __file__,
                                             f"--child={weights},{jpegs},{out},{cache}"], env)
                    splits[f"{kind}_{temp}"].append(json.loads(stdout.splitlines()[-1]))
                runs[f"{kind}_{temp}"].append(seconds)
                shutil.rmtree(out)
            shutil.rmtree(cache)
    from lfvit_jax.models import precision  # here: a child process times its own imports
    cpu = precision.host_cpu_model()
    result = {"cpu": cpu, "cores": os.cpu_count(), "images": FLAGS.images, "rounds": FLAGS.rounds,
              "date": time.strftime("%Y-%m-%d"), "loadavg_after": os.getloadavg()[0],
              **{f"{k}_s": statistics.median(v) for k, v in runs.items()}}
    for name, rows in splits.items():
        for key in rows[0]:
            result[f"{name}_{key}"] = statistics.median(row[key] for row in rows)
    print(f"{cpu}, {os.cpu_count()} cores, {FLAGS.images} JPEGs, median of {FLAGS.rounds} rounds")
    for name in runs:
        line = f"  {name:13s} {result[f'{name}_s']:5.1f} s wall"
        if name in splits:
            line += "  (" + ", ".join(f"{k} {result[f'{name}_{k}']:.1f}" for k in
                                      ("imports", "loading", "compile", "compute")) + \
                f"; {result[f'{name}_executables']:.0f} executables)"
        print(line)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
