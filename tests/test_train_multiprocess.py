"""Two processes x 4 CPU devices on 127.0.0.1 (gloo collectives) follow the same loss
trajectory as one process x 8 devices with the same global batch."""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np

import train_fakes
import train_multiprocess_worker

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTS]), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=4")
    address = f"127.0.0.1:{free_port()}"
    procs = [subprocess.Popen([sys.executable, os.path.join(TESTS, "train_multiprocess_worker.py"),
                               address, "2", str(i)], env=env, cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for i in range(2)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=420)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(outs)
    line = next(l for l in outs[0].splitlines() if l.startswith("LOSSES"))
    multi = json.loads(line.split(" ", 1)[1])
    assert multi["devices"] == 8 and multi["local_devices"] == 4
    assert jax.device_count() == 8 and jax.process_count() == 1
    single = train_multiprocess_worker.losses(train_fakes.tiny_config())
    np.testing.assert_allclose(multi["losses"], single, rtol=1e-5)
