"""Devices, mesh and shardings: a 1-D 'data' mesh over every device of every process. Batches
are split over 'data'; parameters and optimizer state are replicated, or with `param_sharding=
'fsdp'` split along their largest divisible dimension (XLA inserts the collectives under jit).
Also JAX's persistent compilation cache.
"""
import json
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lfvit_jax.core.errors import UsageError

PARAM_SHARDINGS = ("replicated", "fsdp")


def maybe_initialize_distributed(auto=False, coordinator_address=None, num_processes=None,
                                 process_id=None):
    """Starts jax.distributed (returns True) when this is one of several processes: explicit
    coordinator flags, or `auto`, a Slurm job of several tasks or a multi-host TPU environment."""
    if coordinator_address:
        if num_processes is None or process_id is None:
            raise UsageError("--coordinator_address needs --num_processes and --process_id too.")
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id)
        return True
    tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1") or 1)
    if auto or "," in tpu_hosts or slurm_tasks > 1:
        jax.distributed.initialize()
        return True
    return False


def enable_compilation_cache(spec=None):
    """JAX's persistent compilation cache, so that a second run loads its executables instead of
    compiling them again. `spec`: 'none' (off), a folder (local or gs://), or None for
    $JAX_COMPILATION_CACHE_DIR, else $XDG_CACHE_HOME/lfvit_jax/jax (~/.cache/lfvit_jax/jax).
    Returns the folder, or None when off."""
    if spec == "none":
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    folder = spec or os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lfvit_jax", "jax")
    jax.config.update("jax_compilation_cache_dir", folder)
    # Every executable: prediction's smaller ones (a second or less each) add up too.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    return folder


def make_mesh():
    return Mesh(np.array(jax.devices()), ("data",))


def batch_sharding(mesh):
    return NamedSharding(mesh, P("data"))


def replicated(mesh):
    return NamedSharding(mesh, P())


def check_batch(global_batch, mesh, grad_accum=1, name="config.batch_size"):
    """Clear error when a batch does not split evenly over devices (and accumulation steps)."""
    n = mesh.devices.size
    if global_batch % (n * grad_accum):
        raise UsageError(
            f"Global batch {global_batch} does not divide over {n} devices x {grad_accum} "
            f"gradient-accumulation steps; set {name} to a multiple of {n * grad_accum}.")


def fsdp_spec(shape, n):
    """Shard the largest dimension divisible by n; small or indivisible arrays stay replicated."""
    for d in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[d] % n == 0 and shape[d] >= n:
            return P(*["data" if i == d else None for i in range(len(shape))])
    return P()


def state_shardings(abstract_state, mesh, mode):
    """A NamedSharding per leaf of an abstract (eval_shape) pytree."""
    if mode not in PARAM_SHARDINGS:
        raise UsageError(f"config.param_sharding={mode!r} is not one of {PARAM_SHARDINGS}.")
    n = mesh.devices.size

    def leaf(x):
        if mode == "replicated" or not hasattr(x, "shape"):
            return replicated(mesh)
        return NamedSharding(mesh, fsdp_spec(x.shape, n))
    return jax.tree.map(leaf, abstract_state)


def to_global(batch, sharding):
    """Process-local numpy batch -> global jax.Arrays sharded along the leading axis."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def host_array(x):
    """A jax.Array as one numpy array on this host, gathered from other processes if needed."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def gather_rows(x):
    """Every process's numpy rows, concatenated in process order (a batch sharded over data)."""
    if jax.process_count() == 1:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(np.asarray(x), tiled=True))


def gather_json(obj):
    """A JSON-serializable value from every process, as a list in process order."""
    if jax.process_count() == 1:
        return [obj]
    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    lengths = gather_rows(np.array([data.size], np.int64))
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:data.size] = data
    rows = gather_rows(padded[None])
    return [json.loads(row[:n].tobytes()) for row, n in zip(rows, lengths)]


def put_global(tree, shardings):
    """Host arrays (identical on every process) -> global jax.Arrays with the given shardings."""
    def put(x, s):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])
    return jax.tree.map(put, tree, shardings)
