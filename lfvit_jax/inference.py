"""Early-exit inference under jit: static shapes, and real savings from compacting the hard samples.

Two paths give the same predictions:
  masked:    both stages on the whole batch, the answer picked per sample (simple, saves nothing);
  compacted: localization on the batch, then only the samples that did not exit, gathered into a
             bucket of a few fixed sizes chosen on the host, run through the focus stage and
             scattered back. Localization runs its last block for the class token only
             (`localize(defer=True)`); the focus stage finishes it for the K tokens it fuses.
             At most one compilation per bucket size; a batch where every sample exits skips
             the focus stage. Over several devices each device compacts its own share
             (shard_map), so no image moves between devices.

On CPU, XLA's matmuls slow down once a batch's activations fall out of cache: `micro_batch`
runs both stages as a loop over slices of that many images inside one compiled call (on a
2-core AVX2 machine, batch 32: LF-ViT at 70% exit 23.1 -> 27.8 img/s in slices of 4, DeiT-S
7.8 -> 10.5 img/s in slices of 8; on a 2-core AVX-512 machine whole batches were faster).
"""
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from lfvit_jax.models.lfvit import LFViT, check_threshold, exit_decision

DEFAULT_BUCKETS = (1 / 8, 1 / 4, 1 / 2, 1)


def bucket_sizes(batch_size, fractions=DEFAULT_BUCKETS, micro_batch=0):
    """Distinct bucket capacities: each fraction of the batch rounded up and, above `micro_batch`,
    to a multiple of it (so a bucket splits into whole slices); largest = the batch."""
    if micro_batch and batch_size % micro_batch:
        raise ValueError(f"Batch size {batch_size} (per device) must be a multiple of "
                         f"micro_batch={micro_batch}.")
    sizes = set()
    for f in fractions:
        size = math.ceil(f * batch_size)
        if micro_batch and size > micro_batch:
            size = micro_batch * math.ceil(size / micro_batch)
        sizes.add(min(batch_size, size))
    return tuple(sorted(sizes | {batch_size}))


def choose_bucket(n, sizes):
    """Smallest capacity that holds n samples (n <= the largest size)."""
    return next(s for s in sizes if s >= n)


class EarlyExitPredictor:
    """Runs LF-ViT with early exit on batches of a fixed size.

    predictor = EarlyExitPredictor(model, variables, batch_size=32)
    out = predictor(images, threshold=0.76)          # compacted
    out = predictor.masked(images, threshold=0.76)   # reference path

    With `sharding` (a NamedSharding over the batch axis) the batch is split over devices. With
    `micro_batch` > 0 every stage runs in slices of that many images (per device).
    """

    def __init__(self, model, variables, batch_size, buckets=DEFAULT_BUCKETS, sharding=None,
                 micro_batch=0):
        if not isinstance(model, LFViT):
            raise ValueError("Early exit needs an LFViT model.")
        if micro_batch < 0:
            raise ValueError(f"micro_batch={micro_batch} must be >= 0 (0 = whole batches).")
        self.model, self.variables, self.batch_size = model, variables, batch_size
        self.sharding = sharding
        self.devices = 1 if sharding is None else sharding.mesh.size
        if batch_size % self.devices:
            raise ValueError(f"Batch size {batch_size} must be a multiple of the "
                             f"{self.devices} devices.")
        self.local_batch = batch_size // self.devices
        # Bucket capacities per device; `sizes` are the whole batch's (times the device count).
        self.local_sizes = bucket_sizes(self.local_batch, buckets, micro_batch)
        self.sizes = tuple(s * self.devices for s in self.local_sizes)
        slices = partial(in_slices, micro_batch=micro_batch, devices=self.devices)
        self._localize = jax.jit(slices(partial(_localize, model)))
        self._masked = jax.jit(slices(partial(_masked, model)))
        focus = partial(_focus_bucket, model, partial(in_slices, micro_batch=micro_batch))
        if sharding is not None:
            batch_spec, replicated = sharding.spec, jax.sharding.PartitionSpec()
            focus = jax.shard_map(focus, mesh=sharding.mesh, out_specs=batch_spec,
                                  in_specs=(replicated, batch_spec, batch_spec, batch_spec))
        self._focus = jax.jit(focus)

    def _put(self, images):
        if images.shape[0] != self.batch_size:
            raise ValueError(f"Expected a batch of {self.batch_size} images, got {images.shape[0]}; "
                             "pad the last batch (and ignore the padded outputs).")
        return images if self.sharding is None else jax.device_put(images, self.sharding)

    def masked(self, images, threshold):
        check_threshold(threshold)
        return self._masked(self.variables, self._put(images), jnp.float32(threshold))

    def __call__(self, images, threshold):
        """Dict with logits, exited, confidence, loc_logits, gca, region, coarse_index,
        fine_index, and `bucket`: the focus batch size used (0 when every sample exited)."""
        check_threshold(threshold)
        images = self._put(images)
        loc = self._localize(self.variables, images, jnp.float32(threshold))
        hard = [np.flatnonzero(~row) for row in
                np.asarray(loc["exited"]).reshape(self.devices, self.local_batch)]
        public = {k: v for k, v in loc.items() if not k.startswith("_")}
        most = max(h.size for h in hard)
        if most == 0:
            return dict(public, logits=loc["loc_logits"], bucket=0)
        size = choose_bucket(most, self.local_sizes)
        # Row d: device d's own hard samples (local indices). Padding slots point past the
        # device's share: gathers clip them, the scatter drops them.
        index = np.full((self.devices, size), self.local_batch, np.int32)
        for row, h in zip(index, hard):
            row[:h.size] = h
        index = jnp.asarray(index.reshape(-1))
        if self.sharding is not None:
            index = jax.device_put(index, self.sharding)
        logits = self._focus(self.variables, images, loc, index)
        return dict(public, logits=logits, bucket=size * self.devices)


def in_slices(fn, micro_batch, devices=1):
    """fn(variables, batched, *rest) computed as a sequential loop over slices of `batched` (a
    pytree, leading axis = batch, split evenly over `devices`): each slice takes `micro_batch` rows
    from every device's share, so slicing moves no data between devices. fn itself when a device's
    share is no larger than `micro_batch`."""
    if not micro_batch:
        return fn

    def sliced(variables, batched, *rest):
        n = jax.tree.leaves(batched)[0].shape[0]
        steps = n // (devices * micro_batch)
        if steps <= 1:
            return fn(variables, batched, *rest)

        def split(x):
            x = x.reshape((devices, steps, micro_batch) + x.shape[1:]).swapaxes(0, 1)
            return x.reshape((steps, devices * micro_batch) + x.shape[3:])

        def merge(y):
            y = y.reshape((steps, devices, micro_batch) + y.shape[2:]).swapaxes(0, 1)
            return y.reshape((n,) + y.shape[3:])
        out = jax.lax.map(lambda b: fn(variables, b, *rest), jax.tree.map(split, batched))
        return jax.tree.map(merge, out)
    return sliced


def _localize(model, variables, images, threshold):
    loc = model.apply(variables, images, defer=True, method=LFViT.localize)
    confidence, exited = exit_decision(loc["loc_logits"], threshold)
    return dict(loc, exited=exited, confidence=confidence)


def _focus_bucket(model, slices, variables, images, loc, index):
    """Focus stage on images[index], scattered into the localization logits (per device under
    shard_map: indices are local)."""
    take = lambda x: jnp.take(x, index, axis=0, mode="clip")
    sub = {k: take(v) for k, v in loc.items()
           if k.startswith("_") or k in ("fine_index", "coarse_index")}
    focus = slices(lambda v, b: model.apply(v, b["images"], b["loc"], method=LFViT.focus))(
        variables, {"images": take(images), "loc": sub})
    return loc["loc_logits"].at[index].set(focus.astype(loc["loc_logits"].dtype), mode="drop")


def _masked(model, variables, images, threshold):
    return model.apply(variables, images, threshold=threshold)
