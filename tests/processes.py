"""Several JAX processes on localhost, as the multi-process tests start them."""
import os
import socket
import subprocess
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
# The tests' models are tiny: compiling costs far more than running them, and LLVM's
# optimizations off take a third off each compilation (XLA's own passes, fusion and layout,
# still run).
FAST_COMPILE = "--xla_backend_optimization_level=0"


def xla_flags(devices):
    """XLA_FLAGS of a test process with `devices` CPU devices."""
    return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"


def process_env(devices, **extra):
    """The environment of a test subprocess with `devices` CPU devices: the tests' imports, the
    session's compilation cache (conftest) and its XLA flags."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTS]), JAX_PLATFORMS="cpu",
                XLA_FLAGS=xla_flags(devices), **extra)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script_args, n=2, devices=4, **env):
    """`python *script_args --coordinator_address=... --num_processes=n --process_id=i` for
    each i, every process with `devices` CPU devices; output (stderr too) on a pipe."""
    env = process_env(devices, **env)
    address = f"127.0.0.1:{free_port()}"
    return [subprocess.Popen([sys.executable, *script_args, f"--coordinator_address={address}",
                              f"--num_processes={n}", f"--process_id={i}"], env=env, cwd=ROOT,
                             text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for i in range(n)]


def finish(procs, timeout=300):
    """([return codes], [outputs]) once every process ended; any left after `timeout` is killed."""
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [p.returncode for p in procs], outs
