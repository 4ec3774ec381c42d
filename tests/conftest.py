"""Test setup: 8 fake CPU devices, so sharding code runs as it would on a small pod."""
import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
