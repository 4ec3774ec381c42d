"""Exact resume after SIGKILL, the non-finite-loss guard, and the incompatible-workdir guard.

Training runs are subprocesses of tests/train_fakes.py (2 fake devices each) sharing the
session's persistent compilation cache (conftest), so only the first one pays for compiling.
"""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

import train_fakes
from processes import ROOT, TESTS, process_env
from lfvit_jax.training import trainer
from lfvit_jax.io import rundir



@pytest.fixture(scope="module")
def env():
    return process_env(2)


def launch(workdir, env, delay=0.0, nan_from=-1):
    return subprocess.Popen([sys.executable, os.path.join(TESTS, "train_fakes.py"), str(workdir),
                             str(delay), str(nan_from)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc, timeout=400):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def saved_state(workdir, step):
    return ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step),
                                                           "state"))


def wait_for_checkpoint(proc, workdir, step, timeout=300):
    """Blocks until the running `proc` has written checkpoint `step` (fails if it exits first)."""
    deadline = time.time() + timeout
    while not (workdir / "checkpoints" / str(step)).exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path, env):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    rc, out = finish(launch(straight, env))
    assert rc == 0, out
    # Slow batches after the start leave time to kill the run between checkpoints 4 and 8.
    proc = launch(killed, env, delay=0.5)
    wait_for_checkpoint(proc, killed, 4)
    proc.send_signal(signal.SIGKILL)
    rc, out = finish(proc)
    assert rc == -signal.SIGKILL
    assert not (killed / "checkpoints" / "8").exists()
    rc, out = finish(launch(killed, env))
    assert rc == 0, out
    assert "start at step 4/8" in out or "start at step 6/8" in out, out
    a, b = saved_state(straight, 8), saved_state(killed, 8)
    flat_a, flat_b = ocp.tree.to_flat_dict(a), ocp.tree.to_flat_dict(b)
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg=str(key))


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, env):
    rc, out = finish(launch(tmp_path, env, nan_from=5))
    assert rc != 0
    assert "NonFiniteLossError: Loss is nan at step 6" in out, out
    assert "last good checkpoint is step 4" in out, out
    steps = sorted(int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit())
    assert steps == [2, 4]


def test_workdir_of_another_model_is_refused(tmp_path):
    config = train_fakes.tiny_config()
    rundir.write_config(config, str(tmp_path))
    other = train_fakes.tiny_config()
    other.model.width = 64
    with pytest.raises(ValueError, match="holds a run with a different \\['model.width'\\]"):
        trainer.train_and_evaluate(other, str(tmp_path), train_fakes.Dataset(other.data))


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, env):
    proc = launch(tmp_path, env, delay=0.5)
    wait_for_checkpoint(proc, tmp_path, 2)
    proc.send_signal(signal.SIGTERM)
    rc, out = finish(proc)
    assert rc == 0, out
    stopped = int(out.split("Preempted: saved step ")[1].split(";")[0])
    assert 2 < stopped < 8 and (tmp_path / "checkpoints" / str(stopped)).exists(), out
