"""Host bookkeeping of streaming early exit: which hard sample waits in which device slot, when a
bucket is full, and when a batch is complete. Plain Python and numpy; the device work (the queue's
rows, the focus stage) is `lfvit_jax.inference`'s.
"""
import collections

import numpy as np


class FocusQueue:
    """Hard samples of successive batches waiting for the focus stage, per device.

    Each device keeps a ring of `slots` rows; a sample queued on device d takes d's next ring
    slot. `take(size)` forms one focus bucket of up to `size` oldest samples per device. A batch is
    complete once every one of its hard samples went through `take` and its result came back
    through `finish`; `complete` hands batches out in order.
    """

    def __init__(self, devices, slots):
        self.slots = slots  # also the index that means "no slot": out of range, dropped
        self._waiting = [collections.deque() for _ in range(devices)]  # (slot, batch, sample)
        self._heads = [0] * devices
        self._open = {}  # batch -> its hard samples without a result yet
        self._results = collections.defaultdict(dict)  # batch -> {sample: result}

    def add(self, batch, hard):
        """Queues batch number `batch`'s hard samples, `hard` (devices, n) bool. Returns each
        sample's slot on its device, (devices, n) int32 (`slots` for samples that exited)."""
        out = np.full(hard.shape, self.slots, np.int32)
        for d, row in enumerate(hard):
            for i in np.flatnonzero(row):
                out[d, i] = self._heads[d]
                self._waiting[d].append((self._heads[d], batch, d * hard.shape[1] + int(i)))
                self._heads[d] = (self._heads[d] + 1) % self.slots
        self._open[batch] = int(hard.sum())
        return out

    def longest(self):
        """Samples waiting on the busiest device."""
        return max(map(len, self._waiting))

    def take(self, size):
        """One bucket: (slots (devices, size) int32, padded with `slots`; the samples taken as
        [(position in the bucket's flattened output, batch, sample)])."""
        index = np.full((len(self._waiting), size), self.slots, np.int32)
        taken = []
        for d, (row, waiting) in enumerate(zip(index, self._waiting)):
            for k in range(min(size, len(waiting))):
                row[k], batch, sample = waiting.popleft()
                taken.append((d * size + k, batch, sample))
        return index, taken

    def finish(self, taken, results):
        """Records `results` (indexed by bucket position) of the samples one `take` gave."""
        for position, batch, sample in taken:
            self._results[batch][sample] = results[position]
            self._open[batch] -= 1

    def complete(self):
        """Yields (batch, {sample: result}) for the oldest batches with every result in, in
        order; stops at the first batch still waiting."""
        while self._open and self._open[min(self._open)] == 0:
            batch = min(self._open)
            del self._open[batch]
            yield batch, self._results.pop(batch, {})
