"""Two processes x 4 CPU devices on 127.0.0.1 (gloo collectives) follow the same loss
trajectory as one process x 8 devices with the same global batch."""
import json
import os

import jax
import numpy as np
import pytest

import train_fakes
import train_multiprocess_worker
from processes import TESTS, finish, launch

pytestmark = pytest.mark.slow  # processes on localhost


def test_two_processes_match_one_process():
    codes, outs = finish(launch([os.path.join(TESTS, "train_multiprocess_worker.py")]),
                         timeout=420)
    assert codes == [0, 0], "\n".join(outs)
    line = next(l for l in outs[0].splitlines() if l.startswith("LOSSES"))
    multi = json.loads(line.split(" ", 1)[1])
    assert multi["devices"] == 8 and multi["local_devices"] == 4
    assert jax.device_count() == 8 and jax.process_count() == 1
    single = train_multiprocess_worker.losses(train_fakes.tiny_config())
    np.testing.assert_allclose(multi["losses"], single, rtol=1e-5)
