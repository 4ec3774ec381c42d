"""The release's side of `benchmarks/profile_ops.py`: run by the release's Python (with torch),
never imported by lfvit_jax.

  RELEASE_DIR/venv/bin/python benchmarks/profile_ops_release.py RELEASE_DIR BATCH TOKENS ITERS

Runs the release's 12 DeiT-S blocks (its LFVisionTransformer's `blocks`, random weights) on
random (BATCH, N, 384) tokens for each N in TOKENS (comma separated), 2 threads, float32, under
torch.profiler, and prints one JSON line: per N, the forward's median wall time and the
self-times of every aten op per forward, in ms.
"""
import json
import sys
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from train_parity_release import _ref_env  # a sibling script of the release's side


def main(release_dir, batch, tokens, iters):
    torch.set_num_threads(2)
    model = _ref_env(release_dir).build_model(7, 5, 0).eval()

    def forward(t):
        for blk in model.blocks:
            t, _ = blk(t)
        return t

    out = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    with torch.no_grad():
        for n in tokens:
            x = torch.randn(batch, n, 384)
            forward(x)
            times = []
            for _ in range(iters):
                start = time.perf_counter()
                forward(x)
                times.append(time.perf_counter() - start)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(iters):
                    forward(x)
            ops = {e.key: e.self_cpu_time_total / 1e3 / iters for e in prof.key_averages()
                   if e.self_cpu_time_total > 0}
            out[str(n)] = {"wall_ms": float(np.median(times)) * 1e3, "ops_ms": ops}
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), [int(n) for n in sys.argv[3].split(",")], int(sys.argv[4]))
