"""Test setup: 8 fake CPU devices, so sharding code runs as it would on a small pod."""
import os
import tempfile

from processes import FAST_COMPILE, xla_flags

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " " + xla_flags(8)
elif FAST_COMPILE not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " " + FAST_COMPILE
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The commands turn JAX's persistent compilation cache on: the tests' goes to a folder of their own.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="lfvit_test_jax_cache_"))
# Every executable, however small: tests build the same tiny models again and again (a fifth off
# test_inference and test_models), and their subprocesses inherit it.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402  (imported after XLA_FLAGS on purpose)
import numpy as np  # noqa: E402

# Parity with float32 references needs true float32 matmuls on every backend.
jax.config.update("jax_default_matmul_precision", "highest")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def gcs():
    """A GCS emulator with bucket `gcs.bucket`; the environment points every client at it for
    this process and its subprocesses (`gcs.env`)."""
    import gcs_emulator
    emulator = gcs_emulator.Emulator()
    saved = {k: os.environ.get(k) for k in emulator.env}
    os.environ.update(emulator.env)
    try:
        yield emulator
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        emulator.stop()


def zero_variables(model, images):
    """`model`'s variables as zeros of the right shapes: enough for inputs refused before any
    computation, without compiling the model."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), images)
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def first_fast(values):
    """Parameters of a test whose first value runs in the fast tier, the others only in the full
    suite."""
    return [values[0], *(pytest.param(v, marks=pytest.mark.slow) for v in values[1:])]


class LazyRuns(dict):
    """name -> run folder, made by `make(name)` on first use and then kept: a test tier that
    needs only one run pays for that one."""

    def __init__(self, make):
        super().__init__()
        self._make = make

    def __missing__(self, name):
        self[name] = self._make(name)
        return self[name]


@pytest.fixture(scope="session")
def runlocal_runs(tmp_path_factory):
    """Finished `demo:runlocal` runs (8 steps, 8 devices): ['lfvit'] and ['deit'] (the DeiT
    baseline), each trained once per session when first used; tests that write into a run use
    `copy_run`."""
    from lfvit_jax.core.config_args import load_config
    from lfvit_jax.training import trainer
    root = tmp_path_factory.mktemp("runlocal")

    def train(name):
        config = load_config({"lfvit": "demo:runlocal", "deit": "demo:runlocal,baseline"}[name])
        config.data.data_dir = str(root / "data")
        trainer.train_and_evaluate(config, str(root / name))
        return root / name
    return LazyRuns(train)


def copy_run(run, folder):
    """A copy of a finished run in `folder`, to write into."""
    import shutil
    return shutil.copytree(run, folder / run.name)
