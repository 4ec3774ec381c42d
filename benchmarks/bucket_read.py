"""Evaluation-stream throughput (images/s) of a prepared dataset read from a bucket against the
same files on local disk, side by side in one run (rounds interleaved).

  python -m benchmarks.bucket_read --bucket gs://B/data --local ~/tensorflow_datasets \
      [--name cluttered_mnist] [--images 400] [--read_threads 0,16] [--rounds 2]

The bucket may be GCS itself or an emulator (the GCS environment variables point at it; see
README, "Datasets and runs in a bucket"). Every image is read and decoded to the evaluation view.
Not part of the tests.
"""
import argparse
import time

from lfvit_jax.data.pipeline import eval_iterator
from lfvit_jax.data.defaults import get_config


def images_per_second(data_dir, name, images, read_threads):
    cfg = get_config(name)
    cfg.update(data_dir=data_dir, read_threads=read_threads, read_buffer_size=4 * read_threads)
    start, seen = time.perf_counter(), 0
    for batch in eval_iterator(cfg, 100, process_index=0, process_count=1):
        seen += len(batch["label"])
        if seen >= images:
            break
    return seen / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--local", required=True)
    parser.add_argument("--name", default="cluttered_mnist")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--read_threads", default="0,16")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rates = {}
    for _ in range(args.rounds):
        for threads in map(int, args.read_threads.split(",")):
            for where, data_dir in (("local", args.local), ("bucket", args.bucket)):
                rates.setdefault((where, threads), []).append(
                    images_per_second(data_dir, args.name, args.images, threads))
    print("| read from | read_threads | images/s (best of rounds) |\n|---|---|---|")
    for (where, threads), values in rates.items():
        print(f"| {where} | {threads} | {max(values):.0f} |")


if __name__ == "__main__":
    main()
