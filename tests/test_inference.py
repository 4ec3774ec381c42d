"""Masked and compacted early exit agree, never drop a sample, and compile a bounded number of times."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lfvit_jax.inference import predictors
from lfvit_jax.models.lfvit import LFViT

from conftest import zero_variables

TINY = dict(num_classes=7, width=32, depth=3, num_heads=2, mlp_dim=64, patch=8, img_size=64,
            region_size=3)
BATCH = 16


@pytest.fixture(scope="module")
def setup():
    model = LFViT(**TINY)
    images = jax.random.normal(jax.random.key(1), (BATCH, 64, 64, 3))
    variables = jax.jit(model.init)(jax.random.key(0), images)  # eager: ~20 s of tiny compiles
    # Sharper head: confidences spread over (0, 1) so thresholds split the batch.
    variables["params"]["head"]["kernel"] = variables["params"]["head"]["kernel"] * 300
    return model, variables, images


# Two float32 computations of the same logits in differently shaped matmuls (compacted buckets,
# slices, shards) differ by their rounding, which scales with the largest logit, not with each
# entry. Measured on this fixture (head x300, logits up to ~80): float32 against float64 is off
# by up to 3.0 float32 ulps of the largest logit (AVX2, AVX and SSE4.2 kernels alike), and the
# paths differ from model.apply by up to 2.6. The bound allows two paths' worst rounding (6)
# with some margin; a wrong index moves logits by whole units (test_wrong_index_fails).
ROUNDING_ULPS = 8


def assert_logits_close(actual, want, err_msg=""):
    atol = ROUNDING_ULPS * np.finfo(np.float32).eps * np.abs(want).max()
    np.testing.assert_allclose(np.asarray(actual), want, rtol=0, atol=atol, err_msg=err_msg)


def quantile_thresholds(conf):
    c = np.sort(conf)
    return {"none exit": 1.0, "all exit": 0.0, "some exit": float((c[4] + c[5]) / 2),
            "most exit": float((c[12] + c[13]) / 2), "one exits": float((c[-1] + c[-2]) / 2),
            "one hard": float((c[0] + c[1]) / 2)}


# micro_batch slices: 4 rows -> 4 slices on one device; 1 row per device -> 2 slices on 8 devices.
@pytest.mark.slow
@pytest.mark.parametrize("sharded,micro_batch", [(False, 0), (True, 0), (False, 4), (True, 1)])
def test_masked_and_compacted_agree(setup, sharded, micro_batch):
    model, variables, images = setup
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data")) if sharded else None
    pred = predictors.EarlyExitPredictor(model, variables, BATCH, sharding=sharding,
                                        micro_batch=micro_batch)
    ref = model.apply(variables, images)
    conf = np.asarray(jax.nn.softmax(ref["loc_logits"]).max(-1))
    assert conf.max() - conf.min() > 0.1
    for name, eta in {**quantile_thresholds(conf), "half": 0.5}.items():
        masked = pred.masked(images, eta)
        out = pred(images, eta)
        exited = conf >= eta
        np.testing.assert_array_equal(np.asarray(out["exited"]), exited, err_msg=name)
        np.testing.assert_array_equal(np.asarray(masked["exited"]), exited, err_msg=name)
        want = np.where(exited[:, None], ref["loc_logits"], ref["focus_logits"])
        assert_logits_close(out["logits"], want, err_msg=name)
        assert_logits_close(masked["logits"], want, err_msg=name)
        np.testing.assert_array_equal(np.asarray(out["logits"]).argmax(-1),
                                      np.asarray(masked["logits"]).argmax(-1))
        # Each device compacts its own share: the bucket fits the busiest device's hard samples.
        most = int((~exited).reshape(pred.devices, -1).sum(1).max())
        assert out["bucket"] == (0 if most == 0 else
                                 pred.devices * predictors.choose_bucket(most, pred.local_sizes))


@pytest.mark.slow
def test_wrong_index_fails(setup):
    """The comparison above catches a compaction index or a token selection that is off."""
    model, variables, images = setup
    pred = predictors.EarlyExitPredictor(model, variables, BATCH)
    ref = jax.jit(model.apply)(variables, images)
    eta = float(np.median(jax.nn.softmax(ref["loc_logits"]).max(-1)))
    loc, outputs = pred._localize(pred.variables, images, jnp.float32(eta))
    exited = np.asarray(outputs["exited"])
    want = np.where(exited[:, None], ref["loc_logits"], ref["focus_logits"])
    hard = np.flatnonzero(~exited).astype(np.int32)
    assert 2 <= len(hard) < BATCH
    assert_logits_close(pred._focus(pred.variables, images, loc, hard), want)
    wrong = {"compaction index off by one": (loc, hard + 1),
             "fine tokens of another sample": (
                 loc.replace(fine_index=jnp.roll(loc.fine_index, 1, axis=0)), hard),
             "fused parents out of step with their children": (
                 loc.replace(coarse_index=jnp.roll(loc.coarse_index, 1, axis=1)), hard)}
    for name, (bad_loc, index) in wrong.items():
        with pytest.raises(AssertionError):
            assert_logits_close(pred._focus(pred.variables, images, bad_loc, index), want,
                                err_msg=name)


@pytest.mark.slow
def test_compiles_at_most_once_per_bucket(setup, monkeypatch):
    model, variables, images = setup
    chex.clear_trace_counter()
    sizes = predictors.bucket_sizes(BATCH)
    monkeypatch.setattr(predictors, "_localize", chex.assert_max_traces(predictors._localize, n=1))
    monkeypatch.setattr(predictors, "_focus_bucket",
                        chex.assert_max_traces(predictors._focus_bucket, n=len(sizes)))
    pred = predictors.EarlyExitPredictor(model, variables, BATCH)
    conf = np.sort(np.asarray(jax.nn.softmax(model.apply(variables, images)["loc_logits"]).max(-1)))
    seen = set()
    for eta in np.concatenate([[0.0, 1.0], (conf[:-1] + conf[1:]) / 2, [0.3, 0.7]]):
        seen.add(pred(images, float(eta))["bucket"])
    assert seen == {0, *sizes}
    chex.clear_trace_counter()


@pytest.mark.parametrize("batch,fractions,micro,want", [
    (32, predictors.DEFAULT_BUCKETS, 0, (4, 8, 16, 32)),
    (2, predictors.DEFAULT_BUCKETS, 0, (1, 2)),
    (10, predictors.DEFAULT_BUCKETS, 0, (2, 3, 5, 10)),
    (8, (0.5,), 0, (4, 8)),
    (48, (1 / 8, 1 / 4, 1 / 3, 1), 8, (6, 16, 48)),  # 12 rounds up to whole slices of 8
])
def test_bucket_sizes(batch, fractions, micro, want):
    sizes = predictors.bucket_sizes(batch, fractions, micro)
    assert sizes == want
    for n in range(1, batch + 1):  # every count fits a bucket: no sample is ever dropped
        assert predictors.choose_bucket(n, sizes) >= n


def test_wrong_batch_size():
    """Refused before any computation: parameters of the right shapes are enough."""
    model, images = LFViT(**TINY), np.zeros((BATCH, 64, 64, 3), np.float32)
    variables = zero_variables(model, images)
    pred = predictors.EarlyExitPredictor(model, variables, BATCH)
    with pytest.raises(ValueError, match="Expected a batch of 16 images, got 8"):
        pred(images[:8], 0.5)
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        pred(images, 2.0)
    with pytest.raises(ValueError, match="multiple of micro_batch=5"):
        predictors.EarlyExitPredictor(model, variables, BATCH, micro_batch=5)


@pytest.mark.slow
@pytest.mark.parametrize("sharded,micro_batch,bucket", [(False, 0, None), (False, 0, 3),
                                                        (False, 4, 8), (True, 0, 1)])
def test_stream_matches_per_batch_compaction(setup, sharded, micro_batch, bucket):
    model, variables, _ = setup
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data")) if sharded else None
    pred = predictors.EarlyExitPredictor(model, variables, BATCH, sharding=sharding,
                                        micro_batch=micro_batch)
    batches = [jax.random.normal(jax.random.key(10 + i), (BATCH, 64, 64, 3)) for i in range(5)]
    conf = np.concatenate([np.asarray(pred(x, 1.0)["confidence"]) for x in batches])
    # Thresholds where every, no, most and few samples exit: buckets fill, stay empty, flush.
    for eta in [0.0, 1.0, *np.quantile(conf, [0.2, 0.5, 0.9])]:
        outs = list(pred.stream(batches, float(eta), bucket))
        assert len(outs) == len(batches)
        for x, out in zip(batches, outs):
            ref = pred(x, float(eta))
            np.testing.assert_array_equal(out["exited"], np.asarray(ref["exited"]))
            for key in ("logits", "loc_logits", "confidence", "region", "coarse_index"):
                # Other bucket shapes reorder XLA's float sums: about 1e-5 on logits of ~10.
                np.testing.assert_allclose(out[key], np.asarray(ref[key]), rtol=1e-4, atol=1e-4,
                                           err_msg=f"{key} at eta={eta}")
    assert list(pred.stream([], 0.5)) == []


@pytest.mark.slow
def test_stream_yields_each_batch_once_its_hard_samples_are_done(setup, monkeypatch):
    model, variables, _ = setup
    chex.clear_trace_counter()
    monkeypatch.setattr(predictors, "_focus_rows", chex.assert_max_traces(predictors._focus_rows, n=1))
    pred = predictors.EarlyExitPredictor(model, variables, BATCH)
    batches = [jax.random.normal(jax.random.key(20 + i), (BATCH, 64, 64, 3)) for i in range(6)]
    conf = np.concatenate([jax.nn.softmax(model.apply(variables, x)["loc_logits"]).max(-1)
                           for x in batches])
    read = []

    def source():
        for i, x in enumerate(batches):
            read.append(i)
            yield x
    # Everything exits: each batch comes out once the next one is read (its localization runs
    # meanwhile), the last one at the end.
    outs = []
    for i, out in enumerate(pred.stream(source(), 0.0)):
        assert read[-1] == min(i + 1, 5) and out["exited"].all()
        outs.append(out)
    assert len(outs) == 6
    # 7 hard samples in 6 batches with buckets of 8: nothing is ready until the end's flush,
    # which uses the smallest bucket size that holds 7 (8, the same compilation).
    conf = np.sort(conf)
    eta = float((conf[6] + conf[7]) / 2)
    read.clear()
    outs = []
    for out in pred.stream(source(), eta):
        assert read[-1] == 5
        outs.append(out)
    assert len(outs) == 6 and sum(int((~o["exited"]).sum()) for o in outs) == 7
    with pytest.raises(ValueError, match="bucket=17 must be in \\[1, 16\\]"):
        pred.stream(batches, 0.5, bucket=17)
    chex.clear_trace_counter()
