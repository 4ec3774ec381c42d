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
             device across batches and the focus stage runs on full buckets of one size.

On CPU, XLA's matmuls slow down once a batch's activations fall out of cache: `micro_batch`
runs both stages as a loop over slices of that many images inside one compiled call (on a
2-core AVX2 machine, batch 32: LF-ViT at 70% exit 23.1 -> 27.8 img/s in slices of 4, DeiT-S
7.8 -> 10.5 img/s in slices of 8; on a 2-core AVX-512 machine whole batches were faster).
"""
import collections
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
        self.stream_bucket = bucket_sizes(self.local_batch, (0.5,), micro_batch)[0]  # per device
        slices = partial(in_slices, micro_batch=micro_batch, devices=self.devices)
        self._localize = jax.jit(slices(partial(_localize, model)))
        self._masked = jax.jit(slices(partial(_masked, model)))
        self.micro_batch = micro_batch
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

    def _put(self, images):
        if images.shape[0] != self.batch_size:
            raise ValueError(f"Expected a batch of {self.batch_size} images, got {images.shape[0]}; "
                             "pad the last batch (and ignore the padded outputs).")
        return images if self.sharding is None else jax.device_put(images, self.sharding)

    def _per_device(self, index):
        """(devices, n) local indices -> one (devices * n,) array, split over the devices."""
        return jax.device_put(index.reshape(-1), self.sharding)

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
        logits = self._focus(self.variables, images, loc, self._per_device(index))
        return dict(public, logits=logits, bucket=size * self.devices)

    def stream(self, batches, threshold, bucket=None):
        """Early exit over an iterable of batches: yields each batch's outputs in order, as
        `__call__` gives them but as numpy arrays and without `bucket`.

        The hard samples of successive batches queue up on the device and the focus stage runs
        on full buckets of `bucket` samples per device, so it computes padding only for the
        last, partial bucket (the smallest bucket size that holds it) and for devices that got
        fewer hard samples than the busiest. A batch is yielded once all of its hard samples are
        done, which may take later batches, and at the earliest after the next batch is read, so
        that the device computes while the caller handles the outputs. The default bucket,
        `stream_bucket`, is half the per-device batch (rounded as `bucket_sizes` does): on a
        2-core CPU at batch 32 the focus stage ran 7-13% faster per image in buckets of 12-16
        than of 24-32.
        """
        check_threshold(threshold)
        bucket = self.stream_bucket if bucket is None else bucket
        if not 1 <= bucket <= self.local_batch or (self.micro_batch and bucket > self.micro_batch
                                                    and bucket % self.micro_batch):
            raise ValueError(f"bucket={bucket} must be in [1, {self.local_batch}] (the per-device "
                             "batch) and a multiple of micro_batch when larger than it.")
        return self._stream(batches, threshold, bucket)

    def _stream(self, batches, threshold, cap):
        flush_sizes = tuple(s for s in self.local_sizes if s < cap) + (cap,)
        ring = self.local_batch + cap  # a queue below cap plus one batch's hard samples
        queues = [collections.deque() for _ in range(self.devices)]  # (slot, batch, row)
        heads = [0] * self.devices
        # By batch number: localization outputs (on device), hard samples not yet dispatched,
        # focus logits read back. `dispatched`: focus calls not yet read back.
        located, waiting, focused, dispatched = {}, {}, collections.defaultdict(dict), []
        buffer = None

        def run_focus(size):
            index = np.full((self.devices, size), ring, np.int32)  # padding: clipped, ignored
            taken = []
            for d, (row, queue) in enumerate(zip(index, queues)):
                take = [queue.popleft() for _ in range(min(size, len(queue)))]
                row[:len(take)] = [slot for slot, _, _ in take]
                taken.append([(d * size + k, number, i) for k, (_, number, i) in enumerate(take)])
            dispatched.append((self._focus_rows(self.variables, buffer, self._per_device(index)),
                               [t for device in taken for t in device]))
            for _, number, _ in dispatched[-1][1]:
                waiting[number] -= 1

        def ready():
            """Reads back the dispatched focus calls (so their queue slots can be reused), then
            yields the batches whose hard samples are all done, oldest first."""
            for logits, taken in dispatched:
                logits = np.asarray(logits)
                for k, number, i in taken:
                    focused[number][i] = logits[k]
            dispatched.clear()
            while located and waiting[min(located)] == 0:
                number = min(located)
                del waiting[number]
                out = {k: np.asarray(v) for k, v in located.pop(number).items()}
                out["logits"] = out["loc_logits"].copy()
                for i, logits in focused.pop(number, {}).items():
                    out["logits"][i] = logits
                yield out

        for number, images in enumerate(batches):
            images = self._put(images)
            loc = self._localize(self.variables, images, jnp.float32(threshold))
            # Finished batches go out while this batch's localization runs.
            yield from ready()
            located[number] = {k: v for k, v in loc.items() if not k.startswith("_")}
            hard = ~np.asarray(loc["exited"]).reshape(self.devices, self.local_batch)
            slots = np.full((self.devices, self.local_batch), ring, np.int32)  # ring: dropped
            for d in range(self.devices):
                for i in np.flatnonzero(hard[d]):
                    slots[d, i] = heads[d]
                    queues[d].append((heads[d], number, d * self.local_batch + i))
                    heads[d] = (heads[d] + 1) % ring
            waiting[number] = int(hard.sum())
            rows = _focus_inputs(images, loc)
            if buffer is None:
                buffer = jax.device_put({k: np.zeros((self.devices * ring,) + v.shape[1:], v.dtype)
                                         for k, v in rows.items()}, self.sharding)
            buffer = self._enqueue(buffer, rows, self._per_device(slots))
            while max(map(len, queues)) >= cap:
                run_focus(cap)
        if any(queues):
            run_focus(choose_bucket(max(map(len, queues)), flush_sizes))
        yield from ready()


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


def _focus_inputs(images, loc):
    """Per sample, what the focus stage reads: the images and the localization's selection."""
    return dict({k: v for k, v in loc.items() if k.startswith("_") or k in ("fine_index",
                                                                            "coarse_index")},
                images=images)


def _focus_rows(model, slices, variables, rows, index):
    """Focus logits of rows[index] (a dict of `_focus_inputs`); indices past the end are clipped."""
    rows = {k: jnp.take(v, index, axis=0, mode="clip") for k, v in rows.items()}
    images = rows.pop("images")
    return slices(lambda v, b: model.apply(v, b["images"], b["loc"], method=LFViT.focus))(
        variables, {"images": images, "loc": rows})


def _focus_bucket(model, slices, variables, images, loc, index):
    """Focus stage on images[index], scattered into the localization logits (per device under
    shard_map: indices are local)."""
    focus = _focus_rows(model, slices, variables, _focus_inputs(images, loc), index)
    return loc["loc_logits"].at[index].set(focus.astype(loc["loc_logits"].dtype), mode="drop")


def _enqueue(queue, rows, slots):
    """Writes row i of `rows` into queue slot slots[i]; slots past the end drop the row."""
    return {k: q.at[slots].set(rows[k], mode="drop") for k, q in queue.items()}


def _masked(model, variables, images, threshold):
    return model.apply(variables, images, threshold=threshold)
