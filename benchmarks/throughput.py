"""Images/s of DeiT-S against LF-ViT (masked and compacted early exit), side by side in one run.

  python benchmarks/throughput.py                       # batch 32, exit fractions 0/50/70/90/100%
  python benchmarks/throughput.py --batch 32 --micro_batch 4    # slices of 4 (AVX2 CPUs)
  python benchmarks/throughput.py --batch 16 --cpu_devices 2 --buckets 16
  python benchmarks/throughput.py --precision bfloat16          # bf16 matmuls, float32 accumulation
  python benchmarks/throughput.py --precision float32           # default: auto, the machine's pick

Random weights, random images. Each exit fraction is hit by setting the threshold to that quantile
of the measured localization confidences over the benchmark batches; at 100% the focus stage never
runs, so that row is the localization stage alone. Two compacted paths are timed: per batch (the
focus stage on each batch's own hard images, in the smallest bucket that holds them) and streaming
(`EarlyExitPredictor.stream`: hard images queue across batches and the focus stage runs on full
buckets; each pass runs through the batches `--stream_repeat` times, the final partial bucket
included). Every round times every path in turn, so drift in the machine's speed hits them alike,
and each figure is the median over `--rounds` rounds; times include the host round trips that pick
buckets. `--micro_batch` slices both models' batches the same way (see lfvit_jax/inference.py).
Prints a table, then a JSON line.
"""
import json
import os
import sys
import time

from absl import app, flags

# The models' defaults are DeiT-S; only the ImageNet sizes are given.
IMAGENET = dict(num_classes=1000, img_size=224)


def median_times(passes, rounds):
    """passes: name -> (run one pass, batches in it). Seconds per batch of each, the median over
    `rounds` rounds that time every pass in turn (so drift in the machine's speed hits all of
    them alike), after two warm-up passes each (compilations)."""
    import numpy as np
    for run, _ in passes.values():
        run()
        run()
    times = {name: [] for name in passes}
    for _ in range(rounds):
        for name, (run, n) in passes.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) / n)
    return {name: float(np.median(t)) for name, t in times.items()}


def over_batches(fn, batches):
    """One pass of fn over the batches, waiting for the last output."""
    import jax

    def run():
        for x in batches:
            out = fn(x)
        jax.block_until_ready(out)
    return run


def over_stream(predictor, batches, threshold, bucket):
    def run():
        for _ in predictor.stream(batches, threshold, bucket):
            pass
    return run


flags.DEFINE_integer("batch", 32, "images per batch")
flags.DEFINE_integer("num_batches", 4, "distinct batches per round")
flags.DEFINE_integer("rounds", 3, "interleaved timing rounds (median)")
flags.DEFINE_string("fractions", "0,0.5,0.7,0.9,1", "exit fractions to time")
flags.DEFINE_integer("region_size", 5, "m, the region's side in coarse tokens")
flags.DEFINE_integer("buckets", 8, "focus bucket sizes: n = every multiple of B/n (one "
                     "compilation each); 0 = the predictor's default B/8, B/4, B/2, B")
flags.DEFINE_integer("stream_repeat", 2, "the streaming rows run through the batches this many "
                     "times per round")
flags.DEFINE_integer("stream_bucket", None, "focus bucket of the streaming rows (default: the "
                     "predictor's, half the per-device batch)")
flags.DEFINE_integer("micro_batch", 0, "run every stage (and DeiT) in slices of this many images "
                     "per device inside one compiled call; 0 = whole batches")
flags.DEFINE_enum("precision", "auto", ["auto", "float32", "bfloat16"], "operand dtype of every "
                  "matmul of both models; auto: bfloat16 where the CPU has native bf16 dot "
                  "products (or on GPU/TPU), float32 elsewhere")
flags.DEFINE_integer("cpu_devices", 1, "split the CPU into this many XLA devices and shard the "
                     "batch over them (both models); each device runs on its own thread")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    args = FLAGS
    if args.cpu_devices > 1:  # must be set before JAX starts
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.cpu_devices}")
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from lfvit_jax.models import flops
    from lfvit_jax.inference.predictors import DEFAULT_BUCKETS, EarlyExitPredictor, in_slices
    from lfvit_jax.models.vit import DeiT
    from lfvit_jax.models.lfvit import LFViT
    from lfvit_jax.models import precision

    args.precision, reason = precision.resolve(args.precision)
    print(reason, flush=True)
    fractions = [float(f) for f in args.fractions.split(",")]
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec("data"))
    buckets = DEFAULT_BUCKETS if not args.buckets else [i / args.buckets
                                                       for i in range(1, args.buckets + 1)]

    deit = DeiT(**IMAGENET, matmul_dtype=args.precision)
    lfvit = LFViT(**IMAGENET, region_size=args.region_size, matmul_dtype=args.precision)
    key = jax.random.key(0)
    batches = [jax.device_put(jax.random.normal(jax.random.fold_in(key, i),
                                                (args.batch, 224, 224, 3)), sharding)
               for i in range(args.num_batches)]
    lf_vars = jax.jit(lfvit.init)(key, batches[0][:1])
    # DeiT-S gets the same trunk weights' shapes: its own single position embedding.
    deit_vars = jax.jit(deit.init)(key, batches[0][:1])
    # As the predictors do: bfloat16 kernels rounded once, not in every call.
    deit_vars = {"params": precision.cast_kernels(deit_vars["params"], args.precision)}

    deit_apply = in_slices(lambda v, x: deit.apply(v, x)["logits"], args.micro_batch,
                           jax.device_count())
    deit_fn = jax.jit(lambda x: deit_apply(deit_vars, x))
    predictor = EarlyExitPredictor(lfvit, lf_vars, args.batch, buckets=buckets, sharding=sharding,
                                   micro_batch=args.micro_batch)
    conf = np.concatenate([np.asarray(predictor(x, 1.0)["confidence"]) for x in batches])

    n = len(batches)
    passes = {"deit": (over_batches(deit_fn, batches), n),
              "masked": (over_batches(lambda x: predictor.masked(x, 0.5)["logits"], batches), n)}
    etas = {}
    for f in fractions:
        # Exit is conf >= eta: the (1 - f) quantile lets a fraction f through.
        name = f"{int(round(f * 100))}%"
        etas[name] = eta = 0.0 if f >= 1 else (1.0 if f <= 0 else float(np.quantile(conf, 1 - f)))
        passes[name] = (over_batches(lambda x, eta=eta: predictor(x, eta)["logits"], batches), n)
        passes["stream " + name] = (over_stream(predictor, batches * args.stream_repeat, eta,
                                                args.stream_bucket), n * args.stream_repeat)
    t = median_times(passes, args.rounds)

    gf = flops.lfvit_summary(lfvit)
    deit_gf = flops.deit_summary(deit)["gflops"]
    rows, lf_img_s, stream_img_s, realised, flops_speedup = [], {}, {}, {}, {}
    for name, eta in etas.items():
        frac = realised[name] = float((conf >= eta).mean())
        flops_speedup[name] = deit_gf / (frac * gf["stage1_gflops"] +
                                         (1 - frac) * gf["stage12_gflops"])
        lf_img_s[name] = args.batch / t[name]
        stream_img_s[name] = args.batch / t["stream " + name]
        rows.append((name, frac, t[name], t["stream " + name], flops_speedup[name]))
    t_deit, t_masked = t["deit"], t["masked"]

    device = f"{jax.devices()[0].device_kind} x{jax.device_count()}"
    print(f"device: {device}, {args.precision} matmuls, batch {args.batch}, micro-batch {args.micro_batch or 'off'}, "
          f"focus buckets {predictor.sizes}, streaming bucket "
          f"{args.stream_bucket or predictor.stream_bucket} per device")
    print(f"DeiT-S 224:              {args.batch / t_deit:8.1f} img/s")
    print(f"LF-ViT masked (both):    {args.batch / t_masked:8.1f} img/s  "
          f"({t_deit / t_masked:.2f}x DeiT)")
    print(f"{'':15} {'compacted per batch':>28}   {'streaming buckets':>28}")
    print(f"{'exit':>6} {'realised':>8} " + f"{'img/s':>8} {'speedup':>8} {'of pred':>8}   " * 2
          + f"{'FLOPs-pred':>10}")
    for name, frac, t_batch, t_stream, fsp in rows:
        cells = "   ".join(f"{args.batch / t_:8.1f} {t_deit / t_:7.2f}x {t_deit / t_ / fsp:8.0%}"
                           for t_ in (t_batch, t_stream))
        print(f"{name:>6} {frac:8.2f} {cells}   {fsp:9.2f}x")
    print(json.dumps({
        "device": device, "precision": args.precision, "batch": args.batch, "micro_batch": args.micro_batch,
        "buckets": list(predictor.sizes),
        "deit_img_s": args.batch / t_deit, "lfvit_masked_img_s": args.batch / t_masked,
        "lfvit_img_s": lf_img_s, "lfvit_stream_img_s": stream_img_s,
        "realised_exit_fraction": realised,
        "speedup": {k: v / (args.batch / t_deit) for k, v in lf_img_s.items()},
        "stream_speedup": {k: v / (args.batch / t_deit) for k, v in stream_img_s.items()},
        "flops_speedup": flops_speedup}))


if __name__ == "__main__":
    app.run(main)
