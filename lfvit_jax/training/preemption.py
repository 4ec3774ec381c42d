"""Stopping cleanly on preemption: SIGTERM sets a flag the training loop checks once per step."""
import signal

import jax
from jax.experimental import multihost_utils


class PreemptionFlag:
    """Set by SIGTERM, so the loop saves a checkpoint and exits at the next step boundary.

    With several processes, JAX's preemption service (started by jax.distributed.initialize)
    catches SIGTERM in any one of them and tells the others; its sync point is the same step in
    every process, so all save that step and stop together.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        if jax.process_count() == 1:
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def should_stop(self, step):
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def close(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
