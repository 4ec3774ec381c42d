"""The matmul precision policy: which dtype the operands of every matmul and einsum take.

"float32" (the default) computes exactly as the release does. "bfloat16" rounds both operands to
bfloat16 and accumulates and returns float32 (`preferred_element_type`): the form for which XLA
picks its fast bf16 kernels (bf16 in and bf16 out runs at float32 speed or below on CPU). Only
the matmuls change; parameters, LayerNorm, softmax, GELU and the residual stream stay float32
(GELU's erf through `erf` below, which XLA:CPU computes faster than its own).

The backward pass of a bfloat16 matmul rounds the incoming float32 gradient to bfloat16 and runs
the same bf16-in / float32-out products (as mixed-precision training does elsewhere), instead of
JAX's default transpose, which would multiply float32 by bfloat16 at float32 speed.
"""
import functools
import logging
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from lfvit_jax.core.errors import UsageError

MATMUL_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
PRECISIONS = ("auto", *MATMUL_DTYPES)
# x86 flags (/proc/cpuinfo) of native bf16 dot products. Without them XLA emulates bfloat16 dots
# and they run slower than float32 (DeiT-S 9.2 against 11.7 img/s on an AVX2 EPYC).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
log = logging.getLogger(__name__)


def check(matmul_dtype):
    if matmul_dtype not in MATMUL_DTYPES:
        raise UsageError(f"matmul_dtype={matmul_dtype!r} is not one of {sorted(MATMUL_DTYPES)} "
                         "(set config.precision, or --precision).")


@functools.cache
def _cpuinfo():
    """(model name, feature flags) of this machine's first CPU in Linux /proc/cpuinfo; ('?', {})
    where it cannot be read."""
    model, flags = "?", frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "?":
                    model = value.strip()
                elif key.strip() == "flags":
                    return model, frozenset(value.split())
    except OSError:
        pass
    return model, flags


def host_cpu_flags():
    """This machine's CPU feature flags; empty where they cannot be read."""
    return _cpuinfo()[1]


def host_cpu_model():
    """This machine's CPU model name, for benchmark reports ('?' where it cannot be read)."""
    return _cpuinfo()[0]


def resolve(precision, cpu_flags=None, platform=None):
    """'auto', 'float32' or 'bfloat16' -> (matmul dtype name, one-line reason).

    'auto' picks bfloat16 on GPU/TPU and on CPUs with native bf16 dot products (avx512_bf16 or
    amx_bf16), float32 elsewhere. Asking for bfloat16 on a CPU without them logs a one-line
    warning. `cpu_flags` (a set of /proc/cpuinfo flags) and `platform` ('cpu',
    'gpu', 'tpu') default to this machine's."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {PRECISIONS}.")
    platform = jax.default_backend() if platform is None else platform
    if platform != "cpu":
        native = f"the {platform} backend has native bf16 dot products"
    else:
        flags = host_cpu_flags() if cpu_flags is None else cpu_flags
        found = [f for f in NATIVE_BF16_FLAGS if f in flags]
        native = f"the CPU has native bf16 dot products ({', '.join(found)})" if found else None
    if precision == "auto":
        if native:
            return "bfloat16", f"bfloat16 matmuls: {native}"
        return "float32", ("float32 matmuls: the CPU has no native bf16 dot products (no "
                           f"{' or '.join(NATIVE_BF16_FLAGS)}), so bfloat16 would run slower")
    if precision == "bfloat16" and not native:
        log.warning("bfloat16 on a CPU without native bf16 dot products (no %s): slower than "
                    "float32 here ('auto' picks float32 on this CPU).",
                    " or ".join(NATIVE_BF16_FLAGS))
        return precision, "bfloat16 matmuls as asked, slower than float32 on this CPU"
    return precision, f"{precision} matmuls as asked"


def heads_einsum(matmul_dtype):
    """Whether the qkv and output projections run as one einsum straight into and out of the
    per-head layout (float32 on AVX-512 CPUs and off CPU: there the attention layer ran about a
    third faster than with the plain matmul), or as the plain (B N, C) matmul with the heads split
    and merged around it (bfloat16, where the einsum made XLA transpose kernels and tokens in
    every call; and float32 on CPUs without AVX-512, where it ran LF-ViT at 70% exit 7-10%
    faster on an AVX2 EPYC)."""
    if matmul_dtype != "float32":
        return False
    return jax.default_backend() != "cpu" or "avx512f" in host_cpu_flags()


def einsum(spec, a, b, matmul_dtype):
    """jnp.einsum of two operands under the policy. `spec` is explicit ('ab,bc->ac'), each index
    at most once per operand, and every index of an operand is in the other one or the output."""
    if matmul_dtype == "float32":
        return jnp.einsum(spec, a, b)
    return _low_einsum(spec, MATMUL_DTYPES[matmul_dtype], a, b)


def dense(x, kernel, bias, matmul_dtype):
    """x (..., C) @ kernel (C, F) + bias (F,): in float32 the very operations of flax's nn.Dense."""
    if matmul_dtype == "float32":
        y = lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
    else:
        y = _low_einsum("nc,cf->nf", MATMUL_DTYPES[matmul_dtype],
                        x.reshape(-1, x.shape[-1]), kernel)
        y = y.reshape(x.shape[:-1] + (kernel.shape[1],))
    return y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))


def _mixed(spec, dtype, a, b):
    return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _low_einsum(spec, dtype, a, b):
    return _mixed(spec, dtype, a, b)


def _low_fwd(spec, dtype, a, b):
    a_low, b_low = a.astype(dtype), b.astype(dtype)
    # The zero-size arrays carry the operands' dtypes, which their gradients must have.
    marks = (jnp.zeros((0,), a.dtype), jnp.zeros((0,), b.dtype))
    return _mixed(spec, dtype, a_low, b_low), (a_low, b_low, marks)


def _low_bwd(spec, dtype, res, g):
    a_low, b_low, (mark_a, mark_b) = res
    inputs, out = spec.split("->")
    sa, sb = inputs.split(",")
    g = g.astype(dtype)
    da = _mixed(f"{out},{sb}->{sa}", dtype, g, b_low)
    db = _mixed(f"{sa},{out}->{sb}", dtype, a_low, g)
    return da.astype(mark_a.dtype), db.astype(mark_b.dtype)


_low_einsum.defvjp(_low_fwd, _low_bwd)


# erf(x) = x P(x^2) / Q(x^2) on [-4, 4] (+-1 in float32 beyond): the rational fit XLA and Eigen
# use for float32 erf, within 4e-7 of the true erf. Written out so that it fuses into the
# surrounding elementwise loop; XLA:CPU's own erf lowering is about 2.5x slower.
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
          -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
          -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
          -7.37332916720468e-03, -1.42647390514189e-02)


def _horner(coefficients, x):
    y = jnp.float32(coefficients[0])
    for c in coefficients[1:]:
        y = y * x + jnp.float32(c)
    return y


def erf(x):
    """float32 erf for the bfloat16 path's GELU (the float32 path keeps jax.lax.erf)."""
    x = jnp.clip(x, -4.0, 4.0)
    x2 = x * x
    return x * _horner(_ERF_P, x2) / _horner(_ERF_Q, x2)


def cast_kernels(params, matmul_dtype):
    """Every Dense/patch/attention kernel (the 'kernel' leaves) in `matmul_dtype`, the rest as is:
    the values the matmuls round them to anyway, done once instead of in every call."""
    if matmul_dtype == "float32":
        return params
    dtype = MATMUL_DTYPES[matmul_dtype]
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x.astype(dtype) if getattr(path[-1], "key", None) == "kernel" else x,
        params)
