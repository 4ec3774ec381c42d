"""TensorBoard event files (tensorboardX, no TensorFlow) and a JSON-lines log; process 0 writes.
A bucket's objects cannot be appended to, so there metrics.jsonl is rewritten whole at each write.
"""
import json
import time

import jax

from lfvit_jax.io import storage

METRICS_FILE = "metrics.jsonl"


class Writer:
    def __init__(self, workdir):
        self.enabled = jax.process_index() == 0
        if self.enabled:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(logdir=str(storage.path(workdir)))
            self._path = storage.path(workdir) / METRICS_FILE
            self._lines = self._jsonl = None  # the text so far (a bucket), or the open file
            if storage.is_remote(workdir):
                self._lines = self._path.read_text() if self._path.exists() else ""
            else:
                self._jsonl = self._path.open("a")

    def write(self, step, scalars):
        """Logs a flat dict of numbers at `step`."""
        if not self.enabled:
            return
        scalars = {k: float(v) for k, v in scalars.items()}
        for key, value in scalars.items():
            self._tb.add_scalar(key, value, step)
        line = json.dumps({"step": int(step), **scalars}) + "\n"
        if self._jsonl is None:
            self._lines += line
            self._path.write_text(self._lines)
        else:
            self._jsonl.write(line)
            self._jsonl.flush()

    def close(self):
        if self.enabled:
            self._tb.close()
            if self._jsonl is not None:
                self._jsonl.close()


class Progress:
    """Images/s and ETA from the steps done since the last call (compilation excluded)."""

    def __init__(self, total_steps, batch_size, start_step):
        self.total, self.batch = total_steps, batch_size
        self._t, self._step = time.perf_counter(), start_step

    def measure(self, step):
        """{'img_per_sec', 'eta_min'}, or {} when no step ran since the clock was reset."""
        now = time.perf_counter()
        steps = step - self._step
        if steps <= 0:
            return {}
        sec_per_step = (now - self._t) / steps
        self._t, self._step = now, step
        return {"img_per_sec": self.batch / sec_per_step,
                "eta_min": (self.total - step) * sec_per_step / 60}

    def reset(self, step):
        """Restarts the clock, e.g. after an evaluation or a compilation."""
        self._t, self._step = time.perf_counter(), step
