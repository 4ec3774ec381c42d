"""Where the encoder's time goes, op by op: ours (jax.profiler) against the release's
(torch.profiler), at the token counts of LF-ViT's stages and of DeiT-S.

  python -m benchmarks.profile_ops --release_python REF/venv/bin/python --release_dir REF
  python -m benchmarks.profile_ops --tokens 50,116,197 --batch 32      # ours only

The 12 DeiT-S blocks (width 384, 6 heads, MLP 1536; random weights), float32, on random
(batch, N, 384) tokens: N = 50 is the localization stage (7x7 coarse tokens and the class
token), 116 the focus stage at m = 5 (its refined and reused tokens), 197 DeiT-S at 224 px. The
blocks are ~95% of either stage's FLOPs. Each op's time is summed into a category (matmul,
attention softmax, GELU, LayerNorm, transpose/copy, other elementwise) and printed per forward,
ours beside the release's, with the forward's wall time measured without a profiler. XLA's ops
are its fusions: a matmul's fused bias or residual add counts as matmul.
"""
import collections
import glob
import gzip
import json
import os
import re
import subprocess
import tempfile
import time

from absl import app, flags

flags.DEFINE_list("tokens", ["50", "116", "197"], "token counts to profile")
flags.DEFINE_integer("batch", 32, "images per forward")
flags.DEFINE_integer("iters", 5, "profiled forwards per token count")
flags.DEFINE_string("release_python", None, "the python of the release's environment (torch)")
flags.DEFINE_string("release_dir", None, "the folder holding ref_env.py and the release's sources")
FLAGS = flags.FLAGS

CATEGORIES = ("matmul", "softmax", "gelu", "layernorm", "transpose/copy", "elementwise")
# aten op (self time) -> category; anything else is 'elementwise'.
TORCH_OPS = {"aten::addmm": "matmul", "aten::mm": "matmul", "aten::bmm": "matmul",
             "aten::_softmax": "softmax", "aten::gelu": "gelu",
             "aten::native_layer_norm": "layernorm", "aten::copy_": "transpose/copy",
             "aten::clone": "transpose/copy", "aten::contiguous": "transpose/copy",
             "aten::empty": "transpose/copy", "aten::empty_like": "transpose/copy"}


def xla_categories(hlo_text):
    """{instruction name: category} for the top-level instructions of a compiled HLO module,
    judged by the opcodes inside each fusion."""
    bodies, current = {}, None
    for line in hlo_text.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if head:
            current = bodies.setdefault(head.group(1), [])
        elif current is not None and "=" in line:
            current.append(line)
    ops = lambda lines: {m.group(1) for l in lines
                         for m in [re.search(r"= [^ ]+ ([a-z\-]+)\(", l)] if m}
    out = {}
    for lines in bodies.values():
        for line in lines:
            name = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) =", line)
            if not name:
                continue
            called = re.search(r"calls=%?([\w.\-]+)", line)
            inner = ops(bodies.get(called.group(1), [])) if called else ops([line])
            if inner & {"dot", "convolution"} or "matmul" in line:
                kind = "matmul"
            elif "exponential" in inner:
                kind = "softmax"
            elif inner & {"erf", "tanh"}:
                kind = "gelu"
            elif "rsqrt" in inner:
                kind = "layernorm"
            elif inner <= {"transpose", "copy", "bitcast", "reshape", "parameter", "slice",
                           "concatenate"}:
                kind = "transpose/copy"
            else:
                kind = "elementwise"
            out[name.group(1)] = kind
    return out


def ours(tokens, batch, iters):
    """{N: {'wall_ms', 'ms': {category: ms per forward}}} of our 12 blocks."""
    import jax
    import numpy as np
    from flax import linen as nn

    from lfvit_jax.models import vit

    class Blocks(nn.Module):
        @nn.compact
        def __call__(self, x):
            for i in range(12):
                x, _ = vit.Block(6, 1536, name=f"blocks_{i}")(x)
            return x

    model = Blocks()
    out = {}
    for n in tokens:
        x = np.random.default_rng(0).normal(size=(batch, n, 384)).astype(np.float32)
        params = jax.jit(model.init)(jax.random.key(0), x)
        forward = jax.jit(model.apply).lower(params, x).compile()
        kinds = xla_categories(forward.as_text())
        jax.block_until_ready(forward(params, x))
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            jax.block_until_ready(forward(params, x))
            times.append(time.perf_counter() - start)
        with tempfile.TemporaryDirectory() as logdir:
            with jax.profiler.trace(logdir, create_perfetto_trace=True):
                for _ in range(iters):
                    jax.block_until_ready(forward(params, x))
            [path] = glob.glob(os.path.join(logdir, "**", "perfetto_trace.json.gz"),
                               recursive=True)
            with gzip.open(path) as f:
                events = json.load(f)
        events = events["traceEvents"] if isinstance(events, dict) else events
        ms = collections.Counter()
        for e in events:
            if e.get("ph") == "X" and e.get("name") in kinds:
                ms[kinds[e["name"]]] += e["dur"] / 1e3 / iters
        out[n] = {"wall_ms": float(np.median(times)) * 1e3, "ms": dict(ms)}
    return out


def release(tokens, batch, iters):
    here = os.path.dirname(os.path.abspath(__file__))
    result = subprocess.run(
        [FLAGS.release_python, os.path.join(here, "profile_ops_release.py"), FLAGS.release_dir,
         str(batch), ",".join(map(str, tokens)), str(iters)],
        check=True, capture_output=True, text=True)
    raw = json.loads(result.stdout.strip().splitlines()[-1])
    out = {}
    for n in tokens:
        ms = collections.Counter()
        for op, t in raw[str(n)]["ops_ms"].items():
            ms[TORCH_OPS.get(op, "elementwise")] += t
        out[n] = {"wall_ms": raw[str(n)]["wall_ms"], "ms": dict(ms)}
    return out


def main(argv):
    del argv
    from lfvit_jax.models import precision
    tokens = [int(n) for n in FLAGS.tokens]
    mine = ours(tokens, FLAGS.batch, FLAGS.iters)
    theirs = release(tokens, FLAGS.batch, FLAGS.iters) if FLAGS.release_python else None
    print(f"{precision.host_cpu_model()}, batch {FLAGS.batch}, float32, ms per forward of the "
          "12 blocks (profiled; wall time unprofiled)")
    for n in tokens:
        print(f"\n{n} tokens   {'ours':>8} {'release':>8} {'ours/release':>13}")
        rows = [(c, mine[n]["ms"].get(c, 0.0), theirs[n]["ms"].get(c, 0.0) if theirs else None)
                for c in CATEGORIES]
        rows.append(("profiled sum", sum(mine[n]["ms"].values()),
                     sum(theirs[n]["ms"].values()) if theirs else None))
        rows.append(("wall", mine[n]["wall_ms"], theirs[n]["wall_ms"] if theirs else None))
        for name, a, b in rows:
            ratio = f"{a / b:13.2f}" if b else ""
            b = f"{b:8.1f}" if b is not None else ""
            print(f"{name:14} {a:8.1f} {b:>8} {ratio}")
    print(json.dumps({"cpu": precision.host_cpu_model(), "batch": FLAGS.batch,
                      "ours": mine, "release": theirs}))


if __name__ == "__main__":
    app.run(main)
