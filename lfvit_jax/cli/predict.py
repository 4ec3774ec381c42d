"""Classify images with early exit.

Inputs are image files, folders of them (recursively) or .npz arrays of normalized images; the
results go to predictions.jsonl and predictions.npz in a new WORKDIR/predictions_<n>/ (or
--output). Needs weights, not a dataset: a trained workdir, or --config with config.init_from.

  lfvit predict --workdir workdirs/demo --input imgs/
  lfvit predict --config lfvit_deit_s:res=224,m=5 --config.init_from=lfvit_s224.pth \
      --workdir out --input photos/
"""
import sys

from absl import flags

from lfvit_jax.cli import jobs
from lfvit_jax.inference import predict

CONFIG = True
REQUIRED = ("workdir", "input")


def define_flags(fv):
    d = dict(flag_values=fv)
    jobs.define_flags(fv, "a config whose model is the run's (default: the workdir's "
                      "config.json); with config.init_from, weights without a trained run")
    flags.DEFINE_multi_string("input", None, "image files, folders of images, or .npz files "
                              "with a normalized float32 'images' array (N, S, S, 3)",
                              **d)
    jobs.define_checkpoint_flags(fv)
    flags.DEFINE_float("threshold", 0.76, "exit after localization when its top softmax "
                       "probability is at least this (1 sends every image to the focus stage)",
                       lower_bound=0.0, upper_bound=1.0, **d)
    flags.DEFINE_integer("batch_size", 32, "images per batch (a multiple of the device count)",
                         lower_bound=1, **d)
    flags.DEFINE_string("output", None, "folder for predictions.jsonl/.npz (default: a new "
                        "WORKDIR/predictions_<n>)", **d)
    flags.DEFINE_bool("overwrite", False, "write into a non-empty --output", **d)
    flags.DEFINE_enum("save_logits", "final", predict.SAVE_LOGITS, "'final' logits, or 'all' to "
                      "run both stages on every image and also save its focus logits", **d)
    flags.DEFINE_string("save_overlays", None, "also write one PNG per image to this folder: the "
                        "region and the refined tokens over the input, and the prediction", **d)
    flags.DEFINE_bool("quiet", False, "no line per image (the summary still prints)", **d)


def main(FLAGS, overrides, args):
    del args
    config = jobs.eval_config(FLAGS, overrides, *FLAGS.input, FLAGS.output, FLAGS.save_overlays)
    summary = predict.predict_checkpoint(
        config, FLAGS.workdir, FLAGS.input, FLAGS.threshold, FLAGS.batch_size, FLAGS.output,
        FLAGS.overwrite, FLAGS.save_logits, FLAGS.save_overlays, FLAGS.checkpoint, FLAGS.quiet)
    if summary["predicted"] == 0:
        sys.exit("No image could be classified; see the reasons above.")
