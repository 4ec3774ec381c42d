"""What train, eval and predict share: the run's folder, the processes of a pod, and the config
(a config file with its overrides, or for eval and predict the trained run's own config.json)."""
from absl import flags

from lfvit_jax.core import config_args, parallel
from lfvit_jax.core.errors import UsageError
from lfvit_jax.io import rundir, storage
from lfvit_jax.models import precision


def define_flags(fv, config_help):
    d = dict(flag_values=fv)
    flags.DEFINE_string("config", None, config_help, **d)
    flags.DEFINE_string("workdir", None, "the run's folder (local or gs://): checkpoints, "
                        "metrics and evaluations", **d)
    flags.DEFINE_bool("multiprocess", False, "call jax.distributed.initialize() and let JAX find "
                      "the other processes (TPU pod slices, GKE; Slurm jobs of several tasks are "
                      "detected without it)", **d)
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process "
                        "runs that JAX does not detect by itself", **d)
    flags.DEFINE_integer("num_processes", None, "with --coordinator_address: number of "
                         "processes", **d)
    flags.DEFINE_integer("process_id", None, "with --coordinator_address: this process's "
                         "index", **d)
    flags.DEFINE_string("compilation_cache", None, "JAX's persistent compilation cache folder "
                        "(default $JAX_COMPILATION_CACHE_DIR, else ~/.cache/lfvit_jax/jax), or "
                        "'none' to turn it off", **d)


def start(FLAGS, *paths):
    """Checks the buckets among the job's paths, turns the compilation cache on and joins the
    other processes of a multi-process run, if this is one."""
    if FLAGS.coordinator_address and (FLAGS.num_processes is None or FLAGS.process_id is None):
        raise UsageError("--coordinator_address needs --num_processes and --process_id too.")
    storage.check_reachable(FLAGS.workdir, *paths)
    parallel.enable_compilation_cache(FLAGS.compilation_cache)
    parallel.maybe_initialize_distributed(FLAGS.multiprocess, FLAGS.coordinator_address,
                                          FLAGS.num_processes, FLAGS.process_id)


def config(FLAGS, overrides, check_model=False):
    """--config with its overrides, or without --config (eval, predict) the trained run's own
    config.json; with `check_model`, a config must build the run's model."""
    if FLAGS.config is None:
        cfg = rundir.read_config(FLAGS.workdir)
        if cfg is None:
            raise UsageError(f"--config is needed: {FLAGS.workdir} holds no trained run (no "
                             f"{rundir.CONFIG_FILE}) to take the config from.")
    else:
        cfg = config_args.load_config(FLAGS.config)
    for key, text in overrides:
        config_args.override(cfg, key, text)
    storage.check_reachable(cfg.data.data_dir, cfg.get("init_from"), cfg.get("resume"))
    if check_model:
        rundir.check_same_model(cfg, FLAGS.workdir)
    return cfg


def define_checkpoint_flags(fv):
    d = dict(flag_values=fv)
    flags.DEFINE_string("checkpoint", "latest", "'latest' (the newest intact step), 'best' (the "
                        "best/ item, picked on the evaluation split) or a step number", **d)
    flags.DEFINE_enum("precision", "float32", precision.PRECISIONS, "operands of every matmul; "
                      "bfloat16 accumulates in float32 and keeps LayerNorm, softmax, GELU, the "
                      "region choice and the exit decision in float32; auto picks bfloat16 where "
                      "the CPU has native bf16 dot products (avx512_bf16, amx_bf16) or on "
                      "GPU/TPU, float32 elsewhere, and says which", **d)


def eval_config(FLAGS, overrides, *paths):
    """The config of an eval or predict job (its `paths` checked first), at --precision."""
    if FLAGS.checkpoint not in ("latest", "best") and not FLAGS.checkpoint.isdigit():
        raise UsageError(f"--checkpoint={FLAGS.checkpoint} is not 'latest', 'best' or a step "
                         "number.")
    start(FLAGS, *paths)
    cfg = config(FLAGS, overrides, check_model=True)
    cfg.precision, reason = precision.resolve(FLAGS.precision)
    if FLAGS.precision == "auto":
        print(f"Precision: {reason}.", flush=True)
    return cfg
