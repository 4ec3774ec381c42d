"""Evaluation-stream throughput (images/s) of a prepared dataset read from a bucket against the
same files on local disk, side by side in one run (rounds interleaved).

  python -m benchmarks.bucket_read --bucket gs://B/data --local ~/tensorflow_datasets \
      [--name cluttered_mnist] [--images 400] [--read_threads 0,16] [--rounds 2]

The bucket may be GCS itself or an emulator (the GCS environment variables point at it; see
docs/training.md, "Several hosts, pods and buckets"). Every image is read and decoded to the evaluation view.
Not part of the tests.
"""
import time

from absl import app, flags

from lfvit_jax.data.defaults import get_config
from lfvit_jax.data.pipeline import eval_iterator

flags.DEFINE_string("bucket", None, "the data dir in the bucket (gs://...)", required=True)
flags.DEFINE_string("local", None, "the same data dir on local disk", required=True)
flags.DEFINE_string("name", "cluttered_mnist", "the prepared dataset")
flags.DEFINE_integer("images", 400, "images read per measurement")
flags.DEFINE_list("read_threads", ["0", "16"], "grain read threads to compare")
flags.DEFINE_integer("rounds", 2, "interleaved rounds (the best is reported)")
FLAGS = flags.FLAGS


def images_per_second(data_dir, name, images, read_threads):
    cfg = get_config(name)
    cfg.update(data_dir=data_dir, read_threads=read_threads, read_buffer_size=4 * read_threads)
    start, seen = time.perf_counter(), 0
    for batch in eval_iterator(cfg, 100, process_index=0, process_count=1):
        seen += len(batch["label"])
        if seen >= images:
            break
    return seen / (time.perf_counter() - start)


def main(argv):
    del argv
    rates = {}
    for _ in range(FLAGS.rounds):
        for threads in map(int, FLAGS.read_threads):
            for where, data_dir in (("local", FLAGS.local), ("bucket", FLAGS.bucket)):
                rates.setdefault((where, threads), []).append(
                    images_per_second(data_dir, FLAGS.name, FLAGS.images, threads))
    print("| read from | read_threads | images/s (best of rounds) |\n|---|---|---|")
    for (where, threads), values in rates.items():
        print(f"| {where} | {threads} | {max(values):.0f} |")


if __name__ == "__main__":
    app.run(main)
