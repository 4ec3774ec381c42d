"""Train or evaluate LF-ViT / DeiT from a config file.

  python main.py --config configs/demo.py --workdir workdirs/demo
  python main.py --config configs/lfvit_deit_s.py:res=288,m=6 --workdir gs://bucket/run \
      --config.batch_size=2048
  python main.py --mode eval --config configs/demo.py --workdir workdirs/demo
  python main.py --mode predict --config configs/demo.py --workdir workdirs/demo --input imgs/ \
      --save_overlays workdirs/demo/overlays

Several processes: Slurm tasks join automatically; on a TPU pod add --multiprocess; elsewhere
pass --coordinator_address, --num_processes and --process_id.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from lfvit_jax import parallel, predict, train

config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py:arg).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, metrics and the final evaluation go here.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "predict"],
                  "train (then evaluate), eval (threshold sweep of the latest checkpoint), or "
                  "predict (classify --input files with early exit).")
flags.DEFINE_multi_string("input", None, "predict: image files, folders of images, or .npz files "
                          "with a normalized 'images' array (N, S, S, 3).")
flags.DEFINE_float("threshold", 0.76, "predict: exit after localization when its top softmax "
                   "probability is at least this.")
flags.DEFINE_integer("predict_batch_size", 32, "predict: images per batch (a multiple of the "
                     "device count).")
flags.DEFINE_string("save_overlays", None, "predict: also write one PNG per image to this "
                    "folder: the region and the refined tokens over the input, and the prediction.")
flags.DEFINE_bool("multiprocess", False, "Call jax.distributed.initialize() and let JAX find the "
                  "other processes (TPU pod slices, GKE, Slurm). Slurm jobs with several tasks "
                  "are detected without it.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs "
                    "that JAX does not detect by itself.")
flags.DEFINE_integer("num_processes", None, "With --coordinator_address: number of processes.")
flags.DEFINE_integer("process_id", None, "With --coordinator_address: this process's index.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    parallel.maybe_initialize_distributed(FLAGS.multiprocess, FLAGS.coordinator_address,
                                          FLAGS.num_processes, FLAGS.process_id)
    if FLAGS.mode == "predict":
        if not FLAGS.input:
            raise app.UsageError("--mode=predict needs --input (files, folders or .npz).")
        predict.predict_checkpoint(FLAGS.config, FLAGS.workdir, FLAGS.input, FLAGS.threshold,
                                   FLAGS.predict_batch_size, overlays_dir=FLAGS.save_overlays)
        return
    modes = {"train": train.train_and_evaluate, "eval": train.evaluate_checkpoint}
    modes[FLAGS.mode](FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
