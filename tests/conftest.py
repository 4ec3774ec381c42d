"""Test setup: 8 fake CPU devices, so sharding code runs as it would on a small pod."""
import os
import tempfile

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The commands turn JAX's persistent compilation cache on: the tests' goes to a folder of their own.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="lfvit_test_jax_cache_"))

import jax  # noqa: E402  (imported after XLA_FLAGS on purpose)

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


@pytest.fixture(scope="session")
def runlocal_runs(tmp_path_factory):
    """Finished `demo:runlocal` runs (8 steps, 8 devices) of LF-ViT and of the DeiT baseline,
    trained once per session; tests that write into a run use `copy_run`."""
    from lfvit_jax.core.config_args import load_config
    from lfvit_jax.training import trainer
    root = tmp_path_factory.mktemp("runlocal")
    runs = {}
    for name, arg in (("lfvit", "runlocal"), ("deit", "runlocal,baseline")):
        config = load_config(f"demo:{arg}")
        config.data.data_dir = str(root / "data")
        trainer.train_and_evaluate(config, str(root / name))
        runs[name] = root / name
    return runs


def copy_run(run, folder):
    """A copy of a finished run in `folder`, to write into."""
    import shutil
    return shutil.copytree(run, folder / run.name)
