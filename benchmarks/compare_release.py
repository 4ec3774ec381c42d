"""LF-ViT against the official release on this machine: both precisions, alternated, N rounds.

  python benchmarks/compare_release.py --release_python ../shared/reference/venv/bin/python \
      --release_dir ../shared/reference --rounds 3

Each round runs, in turn, ours (`benchmarks/throughput.py`) and the release's harness
(`bench_reference.py`, see ../shared/reference/README.md) in float32 and then in bfloat16 (ours:
bfloat16 matmuls; the release: torch.autocast), each in its own process, so that drift in the
machine's speed hits all four alike; the order of ours and the release alternates from round to
round. Prints every run, the medians over the rounds (img/s, DeiT-S and LF-ViT at the exit
fraction) and ours in each precision, and in the one `--precision auto` picks here, against the
release's best precision on this machine. The load average before each run is printed with it:
figures taken while other programs run are not comparable.
"""
import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from lfvit_jax.models import precision as policy  # noqa: E402  (after the path)
PRECISIONS = ("float32", "bfloat16")


flags.DEFINE_string("release_python", None, "the python of the release's environment (torch), "
                    "e.g. its venv's")
flags.DEFINE_string("release_dir", None, "the folder holding bench_reference.py and ref_env.py")
flags.DEFINE_integer("rounds", 3, "rounds; each runs all four")
flags.DEFINE_integer("batch", 32, "images per batch")
flags.DEFINE_float("exit", 0.7, "exit fraction of the LF-ViT figures")
flags.DEFINE_integer("threads", os.cpu_count(), "the release's torch threads (ours uses every "
                     "core)")
flags.DEFINE_list("precisions", list(PRECISIONS), "a subset of float32,bfloat16")
flags.mark_flags_as_required(["release_python", "release_dir"])
FLAGS = flags.FLAGS


def last_json(stdout, command):
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON line in the output of {' '.join(command)}:\n{stdout[-2000:]}")


def run(command, cwd=None):
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    return last_json(done.stdout, command)


def ours(args, precision):
    out = run([sys.executable, os.path.join(HERE, "throughput.py"), "--batch", str(args.batch),
               "--fractions", str(args.exit), "--num_batches", "2", "--rounds", "3",
               "--precision", precision])
    name = f"{int(round(args.exit * 100))}%"
    return {"deit": out["deit_img_s"], "lfvit": out["lfvit_img_s"][name],
            "stream": out["lfvit_stream_img_s"][name]}


def release(args, precision):
    command = [args.release_python, "bench_reference.py", "--batch", str(args.batch), "--iters",
               "5", "--exit", str(args.exit), "--threads", str(args.threads)]
    out = run(command + (["--bf16"] if precision == "bfloat16" else []), cwd=args.release_dir)
    return {"deit": out["deit_img_s"], "lfvit": next(iter(out["lfvit_img_s"].values()))}


def cpu_line():
    flags = policy.host_cpu_flags()
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{policy.host_cpu_model()}, {os.cpu_count()} cores, {' '.join(isa) or 'no AVX2'}"


def main(argv):
    del argv
    args = FLAGS
    precisions = args.precisions
    if not precisions or set(precisions) - set(PRECISIONS):
        raise SystemExit(f"--precisions must be a subset of {','.join(PRECISIONS)}")
    auto, reason = policy.resolve("auto", platform="cpu")
    print(f"{cpu_line()}; {time.strftime('%Y-%m-%d')}; auto: {reason}", flush=True)
    runs = {(who, p): [] for who in ("ours", "release") for p in precisions}
    for r in range(args.rounds):
        for p in precisions:
            order = ("ours", "release") if r % 2 == 0 else ("release", "ours")
            for who in order:
                load = open("/proc/loadavg").read().split()[0] if os.path.exists(
                    "/proc/loadavg") else "?"
                figures = (ours if who == "ours" else release)(args, p)
                runs[who, p].append(figures)
                print(f"round {r + 1} {who:7} {p:8} (load {load}): " +
                      " ".join(f"{k} {v:.1f}" for k, v in figures.items()), flush=True)
    medians = {key: {k: statistics.median(f[k] for f in fs) for k in fs[0]}
               for key, fs in runs.items()}
    print(f"\nmedians over {args.rounds} rounds, img/s (batch {args.batch}, LF-ViT at "
          f"{args.exit:.0%} exit):")
    for (who, p), m in medians.items():
        print(f"  {who:7} {p:8} " + " ".join(f"{k} {v:.1f}" for k, v in m.items()))
    best = max(precisions, key=lambda p: medians["release", p]["lfvit"])
    ref = medians["release", best]["lfvit"]
    ratios = {p: medians["ours", p]["lfvit"] / ref for p in precisions}
    print(f"against the release's best here ({best}, {ref:.1f} img/s): " +
          ", ".join(f"ours {p} {x:.2f}x" for p, x in ratios.items()) +
          (f"; auto picks {auto}: {ratios[auto]:.2f}x" if auto in ratios else ""))
    print(json.dumps({"cpu": cpu_line(), "auto": auto, "rounds": args.rounds,
                      "medians": {f"{w} {p}": m for (w, p), m in medians.items()},
                      "release_best": best, "ratio_to_release_best": ratios}))


if __name__ == "__main__":
    app.run(main)
