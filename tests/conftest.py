"""Test setup: 8 fake CPU devices, so sharding code runs as it would on a small pod."""
import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (imported after XLA_FLAGS on purpose)

# Parity with float32 references needs true float32 matmuls on every backend.
jax.config.update("jax_default_matmul_precision", "highest")
