"""The per-step cost of the preemption check with several processes: JAX's preemption sync point
(what training calls at every step) against an allgather of a stop flag (the alternative: every
process shares its own flag at every step), side by side in one run of two processes on
127.0.0.1 with CPU devices.

  python -m benchmarks.preemption_check [--calls 20000] [--gathers 200]

Not part of the tests.
"""
import os
import socket
import subprocess
import sys
import time

from absl import app, flags

flags.DEFINE_integer("calls", 20000, "sync-point calls timed")
flags.DEFINE_integer("gathers", 200, "allgathers timed")
flags.DEFINE_list("worker", None, "internal: ADDRESS,PROCESS_ID of a worker process")
FLAGS = flags.FLAGS


def worker(address, process_id, calls, gathers):
    import jax
    from jax.experimental import multihost_utils
    jax.distributed.initialize(coordinator_address=address, num_processes=2,
                               process_id=process_id)
    start = time.perf_counter()
    for step in range(calls):
        multihost_utils.reached_preemption_sync_point(step)
    sync = (time.perf_counter() - start) / calls
    start = time.perf_counter()
    for _ in range(gathers):
        multihost_utils.process_allgather(jax.numpy.int32(0))
    gather = (time.perf_counter() - start) / gathers
    if jax.process_index() == 0:
        print(f"sync point {sync * 1e6:.2f} us/step; allgather of a flag {gather * 1e3:.2f} "
              "ms/step", flush=True)


def main(argv):
    del argv
    if FLAGS.worker:
        return worker(FLAGS.worker[0], int(FLAGS.worker[1]), FLAGS.calls, FLAGS.gathers)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=4")
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.preemption_check",
                               f"--calls={FLAGS.calls}", f"--gathers={FLAGS.gathers}",
                               f"--worker={address},{i}"], env=env) for i in range(2)]
    sys.exit(max(p.wait() for p in procs))


if __name__ == "__main__":
    app.run(main)
