"""The per-step cost of the preemption check with several processes: JAX's preemption sync point
(what training calls at every step) against an allgather of a stop flag (the alternative: every
process shares its own flag at every step), side by side in one run of two processes on
127.0.0.1 with CPU devices.

  python -m benchmarks.preemption_check [--calls 20000] [--gathers 200]

Not part of the tests.
"""
import argparse
import os
import socket
import subprocess
import sys
import time


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


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--gathers", type=int, default=200)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)  # address, process id
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker[0], int(args.worker[1]), args.calls, args.gathers)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=4")
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.preemption_check", "--calls",
                               str(args.calls), "--gathers", str(args.gathers), "--worker",
                               address, str(i)], env=env) for i in range(2)]
    sys.exit(max(p.wait() for p in procs))


if __name__ == "__main__":
    main()
