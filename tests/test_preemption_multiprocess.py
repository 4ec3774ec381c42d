"""SIGTERM to one of two training processes (127.0.0.1, 4 CPU devices each): both save the same
step and exit 0; the rerun resumes there and ends bit-identical to an uninterrupted run."""
import os
import signal

import jax
import numpy as np
import pytest
import orbax.checkpoint as ocp

from lfvit_jax.data.defaults import cluttered_mnist_config
from lfvit_jax.data import pipeline
from processes import ROOT, TESTS, finish, launch

pytestmark = pytest.mark.slow  # processes on localhost


def run(workdir, data_dir, script):
    """`script` (main.py's flags) in two processes of 4 devices on the runlocal demo."""
    return launch([*script, "--config", os.path.join(ROOT, "configs/demo.py:runlocal"),
                   f"--config.data.data_dir={data_dir}", "--workdir", str(workdir),
                   "--config.eval_batch_size=200"])


def state(workdir, step):
    """A saved state as numpy arrays (its devices were other processes')."""
    path, ckptr = workdir / "checkpoints" / str(step) / "state", ocp.StandardCheckpointer()
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype),
                          ckptr.metadata(path).item_metadata.tree,
                          is_leaf=lambda x: hasattr(x, "shape"))
    return ocp.tree.to_flat_dict(ckptr.restore(path, target))


def test_sigterm_to_one_process_stops_both_at_one_step(tmp_path):
    data = cluttered_mnist_config()
    data.data_dir = str(tmp_path / "data")
    pipeline.prepared_builder(data)  # built once, before two processes read it
    main = [os.path.join(ROOT, "main.py")]
    codes, outs = finish(run(tmp_path / "straight", data.data_dir, main))
    assert codes == [0, 0], "\n".join(outs)

    # Batches after the third come one per second: SIGTERM to process 1 once step 2 is logged.
    killed = tmp_path / "killed"
    procs = run(killed, data.data_dir, [os.path.join(TESTS, "slow_main.py"), "3", "1.0"])
    lines = []
    for line in procs[0].stdout:
        lines.append(line)
        if line.startswith("step 2/8"):
            procs[1].send_signal(signal.SIGTERM)
            break
    codes, outs = finish(procs)
    outs[0] = "".join(lines) + outs[0]
    assert codes == [0, 0], "\n".join(outs)
    saved = [l for l in outs[0].splitlines() if l.startswith("Preempted: saved step")]
    assert len(saved) == 1, outs[0]
    step = int(saved[0].split()[3].rstrip(";"))
    assert 2 < step < 8
    assert sorted(int(p.name) for p in (killed / "checkpoints").iterdir()
                  if p.name.isdigit()) == sorted({4, step} if step > 4 else {step})

    codes, outs = finish(run(killed, data.data_dir, main))
    assert codes == [0, 0], "\n".join(outs)
    assert f"start at step {step}/8" in outs[0], outs[0]
    a, b = state(tmp_path / "straight", 8), state(killed, 8)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))
