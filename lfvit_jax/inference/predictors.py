"""Early-exit inference under jit: static shapes, and real savings from compacting the hard samples.

Three paths give the same predictions:
  masked:    both stages on the whole batch, the answer picked per sample (simple, saves nothing);
  compacted: localization on the batch, then only the samples that did not exit, gathered into a
             bucket of a few fixed sizes chosen on the host, run through the focus stage and
             scattered back. Localization runs its last block for the class token only
             (`localize(defer=True)`); the focus stage finishes it for the K tokens it fuses.
             At most one compilation per bucket size; a batch where every sample exits skips
             the focus stage. Over several devices each device compacts its own share
             (shard_map), so no image moves between devices.
  streaming: compacted over a sequence of batches (`stream`): the hard samples queue up on the
             device across batches (`exit_queue.FocusQueue` keeps the books) and the focus stage
             runs on full buckets of one size.

`micro_batch` runs both stages as a loop over slices of that many images inside one compiled
call: XLA's CPU matmuls can slow down once a batch's activations leave the cache (README,
Throughput). `SinglePassPredictor` serves a model without early exit (DeiT) the same way.
"""
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from lfvit_jax import tasks
from lfvit_jax.core import parallel
from lfvit_jax.inference.exit_queue import FocusQueue
from lfvit_jax.models import precision
from lfvit_jax.models.lfvit import LFViT, check_threshold, exit_decision

DEFAULT_BUCKETS = (1 / 8, 1 / 4, 1 / 2, 1)


def bucket_sizes(batch_size, fractions=DEFAULT_BUCKETS, micro_batch=0):
    """Distinct bucket capacities: each fraction of the batch rounded up and, above `micro_batch`,
    to a multiple of it (so a bucket splits into whole slices); largest = the batch."""
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


class Predictor:
    """Fixed-size batches of one model, optionally split over devices (`sharding`, a
    NamedSharding over the batch axis) and run in slices of `micro_batch` images per device."""

    def __init__(self, model, variables, batch_size, sharding=None, micro_batch=0):
        if micro_batch < 0:
            raise ValueError(f"micro_batch={micro_batch} must be >= 0 (0 = whole batches).")
        # bfloat16 matmul kernels are rounded once here rather than inside every compiled call
        # (that conversion cost DeiT-S about a fifth of its bfloat16 speed on CPU).
        variables = dict(variables, params=precision.cast_kernels(variables["params"],
                                                                  model.matmul_dtype))
        self.model, self.variables, self.batch_size = model, variables, batch_size
        self.sharding, self.micro_batch = sharding, micro_batch
        self.devices = 1 if sharding is None else sharding.mesh.size
        if batch_size % self.devices:
            raise ValueError(f"Batch size {batch_size} must be a multiple of the "
                             f"{self.devices} devices.")
        self.local_batch = batch_size // self.devices
        if micro_batch and self.local_batch % micro_batch:
            raise ValueError(f"Batch size {self.local_batch} (per device) must be a multiple of "
                             f"micro_batch={micro_batch}.")
        self._slices = partial(in_slices, micro_batch=micro_batch, devices=self.devices)

    def _put(self, images):
        """A batch, or with several processes this process's share of it (its rows of the
        global batch), onto the devices."""
        several = self.sharding is not None and not self.sharding.is_fully_addressable
        expected = self.batch_size // jax.process_count() if several else self.batch_size
        if images.shape[0] != expected:
            share = f" (this process's share of {self.batch_size})" if several else ""
            raise ValueError(f"Expected a batch of {expected} images{share}, got "
                             f"{images.shape[0]}; pad the last batch (and ignore the padded "
                             "outputs).")
        if several:
            return parallel.to_global(images, self.sharding)
        return images if self.sharding is None else jax.device_put(images, self.sharding)

    def _per_device(self, index):
        """(devices, n) local indices -> one (devices * n,) array, split over the devices."""
        return jax.device_put(index.reshape(-1), self.sharding)


class SinglePassPredictor(Predictor):
    """A classifier without early exit behind the predictors' interface: one pass decides every
    image, and its outputs are the logits alone (the threshold is not used)."""

    def __init__(self, model, variables, batch_size, sharding=None, micro_batch=0):
        super().__init__(model, variables, batch_size, sharding, micro_batch)
        self._apply = jax.jit(self._slices(partial(_classify, model)))

    def __call__(self, images, threshold):
        check_threshold(threshold)
        return self._apply(self.variables, self._put(images))

    masked = __call__

    def stream(self, batches, threshold):
        """Yields each batch's outputs as numpy, once the next batch has been dispatched."""
        check_threshold(threshold)
        pending = None
        for images in batches:
            out = self(images, threshold)
            if pending is not None:
                yield _to_host(pending)
            pending = out
        if pending is not None:
            yield _to_host(pending)


class EarlyExitPredictor(Predictor):
    """Runs LF-ViT with early exit on batches of a fixed size.

    predictor = EarlyExitPredictor(model, variables, batch_size=32)
    out = predictor(images, threshold=0.76)          # compacted
    out = predictor.masked(images, threshold=0.76)   # reference path
    for out in predictor.stream(batches, 0.76): ...  # compacted across batches
    """

    def __init__(self, model, variables, batch_size, buckets=DEFAULT_BUCKETS, sharding=None,
                 micro_batch=0):
        super().__init__(model, variables, batch_size, sharding, micro_batch)
        # Bucket capacities per device; `sizes` are the whole batch's (times the device count).
        self.local_sizes = bucket_sizes(self.local_batch, buckets, micro_batch)
        self.sizes = tuple(s * self.devices for s in self.local_sizes)
        self.stream_bucket = bucket_sizes(self.local_batch, (0.5,), micro_batch)[0]  # per device
        self._localize = jax.jit(self._slices(partial(_localize, model)))
        self._masked = jax.jit(self._slices(partial(_masked, model)))
        focus_slices = partial(in_slices, micro_batch=micro_batch)
        focus = partial(_focus_bucket, model, focus_slices)
        rows = partial(_focus_rows, model, focus_slices)
        enqueue = _enqueue
        if sharding is not None:  # per device: its own rows, local indices
            batch, replicated = sharding.spec, jax.sharding.PartitionSpec()
            per_device = partial(jax.shard_map, mesh=sharding.mesh, out_specs=batch)
            focus = per_device(focus, in_specs=(replicated, batch, batch, batch))
            rows = per_device(rows, in_specs=(replicated, batch, batch))
            enqueue = per_device(enqueue, in_specs=(batch, batch, batch))
        self._focus = jax.jit(focus)
        self._focus_rows = jax.jit(rows)
        self._enqueue = jax.jit(enqueue, donate_argnums=0)  # the queue is updated in place

    def masked(self, images, threshold):
        check_threshold(threshold)
        return self._masked(self.variables, self._put(images), jnp.float32(threshold))

    def _hard(self, outputs):
        """(devices, local batch) bool: the samples that did not exit, on the host."""
        return ~_host(outputs["exited"]).reshape(self.devices, self.local_batch)

    def __call__(self, images, threshold):
        """Dict with logits, exited, confidence, loc_logits, gca, region, coarse_index,
        fine_index, and `bucket`: the focus batch size used (0 when every sample exited)."""
        check_threshold(threshold)
        images = self._put(images)
        loc, outputs = self._localize(self.variables, images, jnp.float32(threshold))
        hard = self._hard(outputs)
        most = int(hard.sum(axis=1).max())
        if most == 0:
            return dict(outputs, logits=outputs["loc_logits"], bucket=0)
        size = choose_bucket(most, self.local_sizes)
        # Row d: device d's own hard samples (local indices). Padding slots point past the
        # device's share: gathers clip them, the scatter drops them.
        index = np.full((self.devices, size), self.local_batch, np.int32)
        for row, h in zip(index, hard):
            row[:h.sum()] = np.flatnonzero(h)
        logits = self._focus(self.variables, images, loc, self._per_device(index))
        return dict(outputs, logits=logits, bucket=size * self.devices)

    def stream(self, batches, threshold, bucket=None):
        """Early exit over an iterable of batches: yields each batch's outputs in order, as
        `__call__` gives them but as numpy arrays and without `bucket`.

        The hard samples of successive batches queue up on the device and the focus stage runs
        on full buckets of `bucket` samples per device, so it computes padding only for the
        last, partial bucket (the smallest bucket size that holds it) and for devices that got
        fewer hard samples than the busiest. A batch is yielded once all of its hard samples are
        done, which may take later batches, and at the earliest after the next batch is read, so
        that the device computes while the caller handles the outputs. The default bucket,
        `stream_bucket`, is half the per-device batch (rounded as `bucket_sizes` does).
        """
        check_threshold(threshold)
        bucket = self.stream_bucket if bucket is None else bucket
        if not 1 <= bucket <= self.local_batch or (self.micro_batch and bucket > self.micro_batch
                                                    and bucket % self.micro_batch):
            raise ValueError(f"bucket={bucket} must be in [1, {self.local_batch}] (the per-device "
                             "batch) and a multiple of micro_batch when larger than it.")
        return self._stream(batches, threshold, bucket)

    def _stream(self, batches, threshold, cap):
        # A ring of a queue below `cap` plus one batch's hard samples per device: no slot is
        # reused before its focus call was read back (`_finished` runs before each enqueue).
        queue = FocusQueue(self.devices, self.local_batch + cap)
        flush_sizes = tuple(s for s in self.local_sizes if s < cap) + (cap,)
        located, dispatched, ring = {}, [], None  # outputs by batch; (logits, taken) in flight
        for number, images in enumerate(batches):
            images = self._put(images)
            loc, outputs = self._localize(self.variables, images, jnp.float32(threshold))
            # Finished batches go out while this batch's localization runs.
            yield from _finished(queue, located, dispatched)
            located[number] = outputs
            slots = queue.add(number, self._hard(outputs))
            entry = {"images": images, "loc": loc}
            if ring is None:
                ring = jax.device_put(jax.tree.map(
                    lambda v: np.zeros((self.devices * queue.slots,) + v.shape[1:], v.dtype),
                    entry), self.sharding)
            ring = self._enqueue(ring, entry, self._per_device(slots))
            while queue.longest() >= cap:
                dispatched.append(self._dispatch(ring, queue.take(cap)))
        if queue.longest():
            size = choose_bucket(queue.longest(), flush_sizes)
            dispatched.append(self._dispatch(ring, queue.take(size)))
        yield from _finished(queue, located, dispatched)

    def _dispatch(self, ring, bucket):
        index, taken = bucket
        return self._focus_rows(self.variables, ring, self._per_device(index)), taken


def _finished(queue, located, dispatched):
    """Reads back the dispatched focus calls into the queue's books, then yields the outputs
    (numpy) of the batches that are complete, their focus logits filled in."""
    for logits, taken in dispatched:
        queue.finish(taken, _host(logits))
    dispatched.clear()
    for number, focused in queue.complete():
        out = _to_host(located.pop(number))
        out["logits"] = out["loc_logits"].copy()
        for i, logits in focused.items():
            out["logits"][i] = logits
        yield out


def _host(x):
    return parallel.host_array(x)


def _to_host(outputs):
    return {k: _host(v) for k, v in outputs.items()}


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
    """(the Localization, its public outputs with the exit decision)."""
    loc = model.apply(variables, images, defer=True, method=LFViT.localize)
    confidence, exited = exit_decision(loc.loc_logits, threshold)
    return loc, dict(loc.outputs(), exited=exited, confidence=confidence)


def _focus_rows(model, slices, variables, rows, index):
    """Focus logits of rows[index] of {'images', 'loc'}; indices past the end are clipped."""
    rows = jax.tree.map(lambda v: jnp.take(v, index, axis=0, mode="clip"), rows)
    return slices(lambda v, b: model.apply(v, b["images"], b["loc"], method=LFViT.focus))(
        variables, rows)


def _focus_bucket(model, slices, variables, images, loc, index):
    """Focus stage on images[index], scattered into the localization logits (per device under
    shard_map: indices are local)."""
    focus = _focus_rows(model, slices, variables, {"images": images, "loc": loc}, index)
    return loc.loc_logits.at[index].set(focus.astype(loc.loc_logits.dtype), mode="drop")


def _enqueue(ring, rows, slots):
    """Writes row i of `rows` into ring slot slots[i]; slots past the end drop the row."""
    return jax.tree.map(lambda q, r: q.at[slots].set(r, mode="drop"), ring, rows)


def _masked(model, variables, images, threshold):
    return model.apply(variables, images, threshold=threshold)


def _classify(model, variables, images):
    return {"logits": model.apply(variables, images)["logits"]}


PREDICTORS = {tasks.LFViTTask: EarlyExitPredictor, tasks.DeiTTask: SinglePassPredictor}


def for_task(task, variables, batch_size, sharding=None, micro_batch=0):
    """The predictor of a task's kind: early exit for LF-ViT, one pass for DeiT."""
    return PREDICTORS[type(task)](task.model, variables, batch_size, sharding=sharding,
                                  micro_batch=micro_batch)
