"""Training against the official release: its loss and gradients for one step of each phase
(tests/testdata/grad_tiny_7x7_m5, from shared/parity/README.md section 7), and its loss curve
over 20 steps through both phases (tests/testdata/train_curve, from benchmarks/train_parity.py)."""
import json
import os

import jax
import numpy as np
import pytest
from flax import traverse_util

from benchmarks import train_parity
from lfvit_jax import load_pretrained, tasks
from lfvit_jax.io.state_dict import to_flax

DATA = os.path.join(os.path.dirname(__file__), "testdata")
GRAD = os.path.join(DATA, "grad_tiny_7x7_m5")
CURVE = os.path.join(DATA, "train_curve")
# Our float32 losses were within 9.6e-7 of the release's on the CPU that recorded the curve (an
# AMD EPYC); the options that depart from the release move them by more than 1e-4.
RTOL_CURVE = 1e-5


def one_step(phase):
    """(loss, terms, flat gradients) of our training loss on the release's batch and weights."""
    with np.load(os.path.join(GRAD, "batch.npz")) as f:
        images, targets, m = f["images"].transpose(0, 2, 3, 1), f["targets"], int(f["region_size"])
    model, variables = load_pretrained(os.path.join(GRAD, "weights.npz"), num_heads=3,
                                       region_size=m, drop_path=0.0)
    task = tasks.for_model(model)

    def loss_fn(params, images, targets):
        out = task.forward(params, images, train=True, phase=phase)
        return task.loss(out, targets, "ce_kl")

    (loss, terms), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        variables["params"], images, targets)
    return float(loss), terms, traverse_util.flatten_dict(jax.device_get(grads))


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["whole", "region"])
def test_loss_and_gradients_match_the_release(phase):
    with open(os.path.join(GRAD, "summary.json")) as f:
        want = json.load(f)["phases"][phase]
    loss, terms, grads = one_step(phase)
    np.testing.assert_allclose(loss, want["loss"], rtol=1e-6)
    np.testing.assert_allclose(terms["ce"], want["ce"], rtol=1e-6)
    np.testing.assert_allclose(terms["kl"], want["kl"], rtol=1e-5)
    with np.load(os.path.join(GRAD, f"grads_{phase}.npz")) as f:
        ref = dict(to_flax(name, f[name]) for name in f.files)
    assert ref.keys() == grads.keys()
    for path, g in ref.items():
        # Within 1e-5 of the tensor's largest entry; where the release gives no gradient
        # (pos_embed_list.1 before selection starts), ours is exactly zero.
        np.testing.assert_allclose(grads[path], g, rtol=0, atol=1e-5 * np.abs(g).max(),
                                   err_msg="/".join(path))



@pytest.mark.slow
def test_training_curve_reproduces_the_release():
    """20 steps of 8 images (10 epochs of 2 steps, lr per epoch, selection from step 10) from the
    release's weights on the committed batches: the release's losses, step by step."""
    with open(os.path.join(CURVE, "release_curve.json")) as f:
        ref = json.load(f)
    with np.load(os.path.join(CURVE, "batches.npz")) as f:
        images, targets = f["images"], f["targets"]
    # One device, as the curve was recorded: eight fake ones split 8 images eight ways on 2 cores.
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    losses, lrs = train_parity.train_ours(ref["run"], images, targets, mesh=mesh)
    np.testing.assert_allclose(lrs, ref["release"]["lr"], rtol=1e-6)
    np.testing.assert_allclose(losses, ref["release"]["loss"], rtol=RTOL_CURVE)
