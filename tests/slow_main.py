"""`main.py` whose training batches come slowly after the first `sys.argv[1]` ones, so that a test
can kill the run between two checkpoints: `python slow_main.py N SECONDS main.py-flags...`."""
import sys
import time

from lfvit_jax.data import pipeline


def slowed(iterator, fast, delay):
    class Slow:
        def __init__(self):
            self.count = 0

        def __iter__(self):
            return self

        def __next__(self):
            self.count += 1
            if self.count > fast:
                time.sleep(delay)
            return next(iterator)

        def __getattr__(self, name):  # get_state, set_state: the iterator's own
            return getattr(iterator, name)
    return Slow()


if __name__ == "__main__":
    fast, delay = int(sys.argv[1]), float(sys.argv[2])
    train_iterator = pipeline.Dataset.train_iterator
    pipeline.Dataset.train_iterator = lambda self, *a, **k: slowed(
        train_iterator(self, *a, **k), fast, delay)
    import main
    sys.exit(main.run(["main.py"] + sys.argv[3:]))
