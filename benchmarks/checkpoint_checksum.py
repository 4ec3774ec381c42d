"""What the checkpoint checksums cost: saving and restoring a training state with and without them.

Saves a freshly initialised training state of a config (DeiT-S by default: parameters and AdamW
moments, the moments random as in a trained state) with orbax as the training loop does, timed to the end of the save (the async write
waited for) and to the return of the call (what the training loop waits for), once as orbax alone
and once through `checkpoint.save` (checksums computed, then saved with the state);
restores it once as orbax alone and once through `checkpoint.restore` (checksums recomputed and
compared), and reads the parameters alone as eval and predict do (`checkpoint.restore_params`:
seconds and bytes read). The variants alternate in every round, in one process, on the same file
system; medians are reported.

  python -m benchmarks.checkpoint_checksum                      # DeiT-S, into a temporary folder
  python -m benchmarks.checkpoint_checksum --rounds 7 --dir /fast/disk/tmp
"""
import json
import os
import shutil
import statistics
import tempfile
import time

import jax
import orbax.checkpoint as ocp
from absl import app, flags
from ml_collections import config_flags

from lfvit_jax.io import checkpoint
from lfvit_jax.io import integrity
from lfvit_jax.models import precision
from lfvit_jax.training import trainer

config_flags.DEFINE_config_file("config", "configs/deit_s.py", "The config whose state is saved.")
flags.DEFINE_integer("rounds", 5, "Timed rounds (each saves and restores with both variants).")
flags.DEFINE_string("dir", None, "Folder for the checkpoints (default: a temporary one).")
FLAGS = flags.FLAGS


def read_bytes():
    """Bytes this process has read so far (any file, page cache or not)."""
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar")).split()[1])


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv):
    del argv
    config = FLAGS.config
    info = dict(num_classes=config.model.num_classes, image_size=config.model.img_size,
                train_examples=config.batch_size * 1000, eval_examples=config.batch_size)
    setup = trainer.Setup(config, info)
    state = setup.scratch_state()
    # A trained state's Adam moments are not zeros (which compress to nothing on disk).
    keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(state))))
    state["opt_state"] = jax.tree.map(lambda x: jax.random.normal(next(keys), x.shape, x.dtype)
                                      if x.ndim and x.dtype == "float32" else x,
                                      state["opt_state"])
    target = checkpoint.abstract_with_shardings(setup.abstract_state, setup.shardings)
    nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
    root = FLAGS.dir or tempfile.mkdtemp(prefix="ckpt_checksum_")
    mngr = checkpoint.manager(os.path.join(root, "checkpoints"))

    def save_plain(step):
        mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))

    def save_checked(step):
        checkpoint.save(mngr, step, state)

    def timed_save(name, fn):
        start = time.perf_counter()
        fn()
        times[f"{name}_call"].append(time.perf_counter() - start)
        mngr.wait_until_finished()
        times[name].append(time.perf_counter() - start)

    def restore_plain(step):
        out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
        jax.block_until_ready(out["state"])

    def restore_checked(step):
        jax.block_until_ready(checkpoint.restore(mngr, step, target))

    # Warm-up: compile the checksum reductions and touch every code path once.
    save_checked(0)
    mngr.wait_until_finished()
    restore_checked(0)
    restore_plain(0)
    params_read = []
    times = {k: [] for k in ("save", "save_checked", "save_call", "save_checked_call", "restore",
                             "restore_params",
                             "restore_checked", "checksum")}
    for r in range(FLAGS.rounds):
        plain, checked = 2 * r + 1, 2 * r + 2
        order = [("save", lambda: save_plain(plain)), ("save_checked",
                                                        lambda: save_checked(checked))]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            timed_save(name, fn)
        order = [("restore", lambda: restore_plain(checked)),
                 ("restore_checked", lambda: restore_checked(checked))]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            times[name].append(timed(fn))
        times["checksum"].append(timed(lambda: integrity.checksums(state)))
        read_before = read_bytes()
        times["restore_params"].append(timed(lambda: jax.block_until_ready(
            checkpoint.restore_params(mngr.directory, checked, target["params"]))))
        params_read.append(read_bytes() - read_before)
    mngr.close()
    if not FLAGS.dir:
        shutil.rmtree(root)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"cpu": precision.host_cpu_model(), "devices": jax.device_count(),
           "state_mb": nbytes / 2**20,
           "rounds": FLAGS.rounds, **{f"{k}_s": v for k, v in med.items()},
           "save_overhead": med["save_checked"] / med["save"] - 1,
           "restore_overhead": med["restore_checked"] / med["restore"] - 1}
    print(f"{out['cpu']}, {out['devices']} device(s): a {out['state_mb']:.0f} MB training state")
    print(f"  save     {med['save']:.3f} s, with checksums {med['save_checked']:.3f} s "
          f"({100 * out['save_overhead']:+.1f}%); the call returns after "
          f"{med['save_call']:.3f} s, with checksums {med['save_checked_call']:.3f} s")
    print(f"  restore  {med['restore']:.3f} s, verified {med['restore_checked']:.3f} s "
          f"({100 * out['restore_overhead']:+.1f}%)")
    print(f"  checksums alone {med['checksum']:.3f} s")
    print(f"  parameters alone (eval, predict): {med['restore_params']:.3f} s, "
          f"{statistics.median(params_read) / 2**20:.0f} MB read")
    print(json.dumps(out))


if __name__ == "__main__":
    app.run(main)
