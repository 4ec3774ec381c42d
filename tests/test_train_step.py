"""The sharded train step against a single device, FSDP and gradient accumulation, and guards."""
import jax
import numpy as np
import pytest
from jax.sharding import Mesh

import train_fakes
from lfvit_jax.core import parallel
from lfvit_jax.training import trainer


def run_steps(config, mesh, state, steps=2, phase="whole"):
    """`steps` updates from `state` (re-placed onto this setup's shardings)."""
    setup = trainer.Setup(config, train_fakes.get_dataset_info(config.data), mesh=mesh)
    state = jax.device_put(state, setup.shardings)
    it = train_fakes.train_iterator(config.data, config.batch_size, seed=0)
    losses = []
    for _ in range(steps):
        batch = parallel.to_global(next(it), parallel.batch_sharding(setup.mesh))
        state, values = setup.train_step(phase)(state, batch)
        losses.append(float(values["loss"]))
    return jax.device_get(state), losses


def initial(config):
    setup = trainer.Setup(config, train_fakes.get_dataset_info(config.data))
    return jax.device_get(setup.scratch_state())


def assert_trees_close(a, b, rtol):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-7), a, b)


@pytest.mark.slow
def test_sharded_step_equals_single_device_step():
    """Drop path on: the per-sample masks must not depend on how the batch is split."""
    config = train_fakes.tiny_config()
    state = initial(config)
    one = Mesh(np.array(jax.devices()[:1]), ("data",))
    s1, l1 = run_steps(config, one, state)
    s8, l8 = run_steps(config, parallel.make_mesh(), state)
    assert len(jax.devices()) == 8
    np.testing.assert_allclose(l1, l8, rtol=1e-6)
    assert_trees_close(s1["params"], s8["params"], rtol=1e-5)


@pytest.mark.slow
def test_fsdp_accumulation_and_ema_match_plain_data_parallel():
    """Without drop path every micro-batch computes the same function, so accumulation is exact
    up to summation order; FSDP changes only where the arrays live; EMA only adds a copy."""
    plain = train_fakes.tiny_config()
    plain.model.drop_path = 0.0
    other = train_fakes.tiny_config(param_sharding="fsdp", grad_accum=2, ema_decay=0.5)
    other.model.drop_path = 0.0
    state = initial(plain)
    mesh = parallel.make_mesh()
    s_plain, l_plain = run_steps(plain, mesh, state)
    s_one, _ = run_steps(plain, mesh, state, steps=1)
    s_other, l_other = run_steps(other, mesh, dict(state, ema=state["params"]))
    np.testing.assert_allclose(l_plain, l_other, rtol=1e-5)
    assert_trees_close(s_plain["params"], s_other["params"], rtol=1e-4)
    # ema_2 = 0.25 p_0 + 0.25 p_1 + 0.5 p_2
    want = jax.tree.map(lambda p0, p1, p2: 0.25 * p0 + 0.25 * p1 + 0.5 * p2, state["params"],
                        s_one["params"], s_plain["params"])
    assert_trees_close(s_other["ema"], want, rtol=1e-4)
    fsdp = trainer.Setup(other, train_fakes.get_dataset_info(other.data),
                       mesh=mesh).shardings["params"]
    assert fsdp["blocks_0"]["mlp"]["fc1"]["kernel"].spec == jax.sharding.PartitionSpec(None, "data")


def test_guards():
    with pytest.raises(ValueError, match="does not divide over 8 devices"):
        config = train_fakes.tiny_config(batch_size=12)
        trainer.Setup(config, train_fakes.get_dataset_info(config.data))
    config = train_fakes.tiny_config()
    config.warmup_epoch = 3
    with pytest.raises(ValueError, match="Unknown config keys \\['warmup_epoch'\\]"):
        trainer.Setup(config, train_fakes.get_dataset_info(config.data))
    config = train_fakes.tiny_config()
    config.model.num_classes = 10
    with pytest.raises(ValueError, match="num_classes=10 but the dataset has num_classes=4"):
        trainer.Setup(config, train_fakes.get_dataset_info(config.data))


@pytest.mark.slow
def test_eval_before_selection_focuses_on_the_whole_image():
    """As the release: an evaluation after an epoch of the whole-image phase runs the focus stage
    on the whole image, from the first epoch with selection on the region (4 steps an epoch,
    selection from step 8)."""
    config = train_fakes.tiny_config(eval_batch_size=8)
    dataset = train_fakes.Dataset(config.data)
    setup = trainer.Setup(config, dataset.info)
    assert [setup.eval_phase(s) for s in (4, 8, 9, 12)] == ["whole", "whole", "region", "region"]
    state = setup.scratch_state()
    batch = next(dataset.eval_iterator(8))
    for step, phase in ((8, "whole"), (12, "region")):
        arrays, summary, _ = trainer.run_eval(setup, dict(state, step=np.int32(step)), dataset)
        want = setup.task.eval_outputs(state["params"], batch["image"], phase=phase)
        np.testing.assert_allclose(arrays["focus_probs"][:8], want["focus_probs"], atol=1e-6)
        assert summary["stage12_gflops"] == setup.task.flops(phase)["stage12_gflops"]
    assert setup.task.flops("whole")["stage12_gflops"] > setup.task.flops()["stage12_gflops"]
