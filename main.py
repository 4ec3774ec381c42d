"""Train, evaluate or predict with LF-ViT / DeiT.

  python main.py --config configs/demo.py --workdir workdirs/demo                 # train + evaluate
  python main.py --mode eval --workdir workdirs/demo                              # the run's config
  python main.py --mode predict --workdir workdirs/demo --input imgs/ --save_overlays workdirs/ov
  python main.py --mode predict --config configs/lfvit_deit_s.py:res=224,m=5 --workdir W \
      --config.init_from=converted/lfvit_s224 --input imgs/                      # no dataset needed

eval and predict load parameters only (the workdir's latest checkpoint, `--checkpoint best` or a
step; else config.resume / config.init_from) and never open the training data. With a trained
workdir they use its own config.json unless --config is given, and refuse a config whose model
differs from the run's (its matmul precision aside: --precision). Several processes: Slurm tasks
join automatically; on a TPU pod add --multiprocess; elsewhere pass --coordinator_address,
--num_processes and --process_id.
"""
import json
import re
import sys

from absl import flags
from ml_collections import config_flags

from lfvit_jax.cli import app as cli
from lfvit_jax.core import parallel
from lfvit_jax.evaluation import evaluate
from lfvit_jax.inference import predict
from lfvit_jax.io import rundir
from lfvit_jax.training import trainer as train


def define_flags(fv, argv):
    d = dict(flag_values=fv)
    config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py:arg). For eval and "
                                    "predict with a trained workdir: default its config.json.",
                                    lock_config=True, sys_argv=argv, **d)
    flags.DEFINE_string("workdir", None, "The run's folder: checkpoints, metrics and "
                        "evaluations.", **d)
    flags.DEFINE_enum("mode", "train", ["train", "eval", "predict"],
                      "train (then evaluate), eval (threshold sweep of a checkpoint, into "
                      "WORKDIR/eval_step<S>_<tag>), or predict (classify --input files with early "
                      "exit).", **d)
    flags.DEFINE_string("checkpoint", "latest", "eval/predict: 'latest' (the newest intact step), "
                        "'best' (the best/ item, picked on the evaluation split) or a step "
                        "number.", **d)
    flags.DEFINE_multi_string("input", None, "predict: image files, folders of images, or .npz "
                              "files with a normalized float32 'images' array (N, S, S, 3).", **d)
    flags.DEFINE_float("threshold", 0.76, "predict: exit after localization when its top softmax "
                       "probability is at least this.", **d)
    flags.DEFINE_integer("predict_batch_size", 32, "predict: images per batch (a multiple of the "
                         "device count).", lower_bound=1, **d)
    flags.DEFINE_string("output", None, "predict: folder for predictions.jsonl/.npz (default: a "
                        "fresh WORKDIR/predictions_<n>).", **d)
    flags.DEFINE_bool("overwrite", False, "predict: write into a non-empty --output.", **d)
    flags.DEFINE_enum("save_logits", "final", predict.SAVE_LOGITS, "predict: 'final' logits, or "
                      "'all' to run both stages on every image and also save its focus logits.",
                      **d)
    flags.DEFINE_string("save_overlays", None, "predict: also write one PNG per image to this "
                        "folder: the region and the refined tokens over the input, and the "
                        "prediction.", **d)
    flags.DEFINE_enum("precision", None, ["float32", "bfloat16"], "eval/predict: operand dtype of "
                      "every matmul (sets config.model.matmul_dtype; default the config's, "
                      "float32). bfloat16 accumulates in float32 and keeps LayerNorm, softmax, "
                      "GELU, the region choice and the exit decision in float32.", **d)
    flags.DEFINE_bool("multiprocess", False, "Call jax.distributed.initialize() and let JAX find "
                      "the other processes (TPU pod slices, GKE, Slurm). Slurm jobs with several "
                      "tasks are detected without it.", **d)
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process "
                        "runs that JAX does not detect by itself.", **d)
    flags.DEFINE_integer("num_processes", None, "With --coordinator_address: number of "
                         "processes.", **d)
    flags.DEFINE_integer("process_id", None, "With --coordinator_address: this process's index.",
                         **d)
    flags.mark_flags_as_required(["workdir"], flag_values=fv)


def resolve_config(given, mode, workdir):
    """The config to run: --config, or for eval/predict the run's own config.json."""
    own = rundir.read_config(workdir)
    if given is None:
        if mode == "train" or own is None:
            raise cli.UsageError(f"--config is needed ({workdir} holds no run with a "
                                 "config.json to take it from).")
        return own
    if mode != "train":
        rundir.check_same_model(given, workdir)
    return given


def check_flags(FLAGS):
    """Usage errors that need more than one flag, or a pattern, found before anything runs."""
    if not re.fullmatch(r"latest|best|\d+", FLAGS.checkpoint):
        raise cli.UsageError(f"--checkpoint={FLAGS.checkpoint} is not 'latest', 'best' or a step "
                             "number.")
    if FLAGS.precision and FLAGS.mode == "train":
        raise cli.UsageError("--precision is for eval and predict; training sets "
                             "config.compute_dtype (its step) and config.model.matmul_dtype "
                             "(its evaluations).")
    if FLAGS.mode == "predict":
        if not FLAGS.input:
            raise cli.UsageError("--mode=predict needs --input (image files, folders or .npz).")
        if not 0.0 <= FLAGS.threshold <= 1.0:
            raise cli.UsageError(f"--threshold={FLAGS.threshold} must be a probability in [0, 1] "
                                 "(1 sends every image to the focus stage).")


def main(FLAGS):
    check_flags(FLAGS)
    parallel.maybe_initialize_distributed(FLAGS.multiprocess, FLAGS.coordinator_address,
                                          FLAGS.num_processes, FLAGS.process_id)
    config = resolve_config(FLAGS.config, FLAGS.mode, FLAGS.workdir)
    if FLAGS.precision:
        with config.unlocked():
            config.model.matmul_dtype = FLAGS.precision
    which = FLAGS.checkpoint
    if FLAGS.mode == "train":
        train.train_and_evaluate(config, FLAGS.workdir)
    elif FLAGS.mode == "eval":
        evaluate.evaluate_checkpoint(config, FLAGS.workdir, which)
    else:
        summary = predict.predict_checkpoint(
            config, FLAGS.workdir, FLAGS.input, FLAGS.threshold, FLAGS.predict_batch_size,
            FLAGS.output, FLAGS.overwrite, FLAGS.save_logits, FLAGS.save_overlays, which)
        print(f"Predicted {summary['predicted']} of {summary['images']} images ("
              f"{summary['skipped']} unreadable, {summary['nonfinite']} with non-finite "
              f"outputs), {100 * summary['exited_fraction']:.1f}% exited after localization, "
              f"{summary['img_per_sec']:.1f} img/s; results in {summary['out_dir']}")
        print(json.dumps(summary), flush=True)
        if summary["predicted"] == 0:
            sys.exit("No image could be classified; see the reasons above.")


if __name__ == "__main__":
    sys.exit(cli.run(define_flags, main))
