"""bfloat16 matmuls against float32: logits close, the same decisions wherever float32's margins
exceed bfloat16's error; and float32 exactly as before."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_fakes
from lfvit_jax.core import parallel
from lfvit_jax.models import selection
from lfvit_jax import tasks
from lfvit_jax.training import trainer
from lfvit_jax.io import rundir
from lfvit_jax.models import precision
from lfvit_jax.models.vit import Dense
from test_parity import DUMPS, load_dump

# bfloat16 error bounds, fixed beforehand (measured on the dumps: logits up to 1.0e-2 of the
# largest logit, GCA tokens 1.1e-3 of the largest value, window scores 1.8e-4 of the largest,
# confidences 1.1e-3; with the plain bfloat16 qkv and projection products, logits up to 1.5e-2,
# the rest within those).
LOGITS_REL = 3e-2
GCA_REL = 1.5e-3
SCORE_REL = 2.5e-4
CONF_ABS = 2e-3


def run(model, variables, ref):
    images = ref["input_full"].transpose(0, 2, 3, 1)
    fn = jax.jit(lambda v, x: model.apply(v, x, threshold=ref["threshold"]))
    return jax.tree.map(np.asarray, fn(variables, images))


@pytest.fixture(scope="module", params=DUMPS)
def both(request):
    model, variables, ref = load_dump(request.param)
    low = model.clone(matmul_dtype="bfloat16")
    return request.param, model, ref, run(model, variables, ref), run(low, variables, ref)


def _gaps(values):
    """Differences between neighbours of each row sorted descending: (B, n - 1)."""
    s = -np.sort(-values, axis=1)
    return s[:, :-1] - s[:, 1:]


@pytest.mark.slow
def test_logits_close(both):
    name, model, _, f32, bf16 = both
    for key in ("loc_logits", "focus_logits"):
        err = np.abs(f32[key] - bf16[key]).max()
        rel = err / np.abs(f32[key]).max()
        print(f"{name} {key}: bfloat16 - float32 max abs {err:.2e}, relative {rel:.2e}")
        assert rel < LOGITS_REL
    gca_err = (np.abs(f32["gca"] - bf16["gca"]).max(1) / f32["gca"].max(1)).max()
    print(f"{name} gca: relative {gca_err:.2e}")
    assert gca_err < GCA_REL
    scores = [np.asarray(selection.window_scores(o["gca"], model.grid)) for o in (f32, bf16)]
    assert (np.abs(scores[0] - scores[1]).max(1) / scores[0].max(1)).max() < SCORE_REL
    assert np.abs(f32["confidence"] - bf16["confidence"]).max() < CONF_ABS


@pytest.mark.slow
def test_decisions_equal_beyond_the_error(both):
    name, model, ref, f32, bf16 = both
    grid, k, m = model.grid, model.num_kept, model.region_size
    scores = np.asarray(selection.window_scores(f32["gca"], grid))
    region_safe = _gaps(scores)[:, 0] > 2 * SCORE_REL * scores.max(1)
    np.testing.assert_array_equal(bf16["region"][region_safe], f32["region"][region_safe])
    # The refined set, where the K-th and (K+1)-th in-window GCA values are apart. (Their order
    # inside the set is not checked: its gaps, 4e-5 to 7e-4 of the largest value here, are below
    # the bfloat16 error, and the logits do not depend on it.)
    window = np.take_along_axis(f32["gca"], np.asarray(grid.window_tokens(f32["region"])), 1)
    eps = GCA_REL * f32["gca"].max(1)
    set_safe = region_safe & ((_gaps(window)[:, k - 1] > 2 * eps) if k < m * m else True)
    for b in np.flatnonzero(set_safe):
        assert set(bf16["coarse_index"][b]) == set(f32["coarse_index"][b])
    exit_safe = np.abs(f32["confidence"] - ref["threshold"]) > CONF_ABS
    np.testing.assert_array_equal(bf16["exited"][exit_safe], f32["exited"][exit_safe])
    final = np.where(exit_safe & region_safe)[0]
    np.testing.assert_array_equal(bf16["logits"][final].argmax(-1), f32["logits"][final].argmax(-1))
    print(f"{name}: decisions checked on {region_safe.sum()} regions, {set_safe.sum()} top-K "
          f"sets, {exit_safe.sum()} exits of {len(region_safe)}")
    # The margins are large enough to check something in every dump.
    assert region_safe.sum() >= 2 and set_safe.sum() >= 1 and exit_safe.sum() >= 3


@pytest.mark.slow
def test_float32_policy_is_the_plain_operations_bit_for_bit(monkeypatch):
    """float32 through the policy equals the model with every policy function replaced by the
    plain operation it stands for (what the model computed before the option existed)."""
    from lfvit_jax.models import vit
    model, variables, ref = load_dump(DUMPS[0])
    assert model.matmul_dtype == "float32"
    policy = run(model, variables, ref)
    monkeypatch.setattr(precision, "einsum", lambda spec, a, b, mm: jnp.einsum(spec, a, b))
    monkeypatch.setattr(precision, "dense", lambda x, kernel, bias, mm: x @ kernel + bias)
    monkeypatch.setattr(vit, "gelu", lambda x, mm="float32": nn.gelu(x, approximate=False))
    plain = run(model, variables, ref)
    assert policy.keys() == plain.keys()
    for key in policy:
        np.testing.assert_array_equal(policy[key], plain[key], err_msg=key)


@pytest.mark.parametrize("shape", [(5, 24), (2, 7, 24)])
def test_dense_float32_is_flax_dense_bit_for_bit(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    ours, flax_dense = Dense(16), nn.Dense(16, kernel_init=nn.initializers.truncated_normal(0.02))
    v = ours.init(jax.random.key(1), x)
    v["params"]["bias"] = jax.random.normal(jax.random.key(2), (16,))
    np.testing.assert_array_equal(ours.apply(v, x), flax_dense.apply(v, x))
    g_ours = jax.grad(lambda v: (ours.apply(v, x) ** 2).sum())(v)
    g_flax = jax.grad(lambda v: (flax_dense.apply(v, x) ** 2).sum())(v)
    jax.tree.map(np.testing.assert_array_equal, g_ours, g_flax)


@pytest.mark.slow
@pytest.mark.parametrize("einsum", [True, False])
def test_both_float32_heads_layouts_match_the_release(monkeypatch, einsum):
    """The per-head einsum and the plain matmul + transpose (`heads_einsum`, chosen per CPU) each
    stay within the parity tolerance of the release's logits."""
    model, variables, ref = load_dump(DUMPS[0])
    monkeypatch.setattr(precision, "heads_einsum", lambda mm: einsum and mm == "float32")
    out = run(model, variables, ref)
    for key in ("loc_logits", "focus_logits"):
        np.testing.assert_allclose(out[key], ref[key], atol=1e-5, rtol=0, err_msg=key)


def test_bfloat16_matmul_rounds_operands_and_accumulates_float32():
    a = jax.random.normal(jax.random.key(0), (8, 256))
    b = jax.random.normal(jax.random.key(1), (256, 4))
    out = precision.einsum("nc,cf->nf", a, b, "bfloat16")
    assert out.dtype == jnp.float32
    rounded = np.asarray(a.astype(jnp.bfloat16), np.float64) @ np.asarray(b.astype(jnp.bfloat16),
                                                                         np.float64)
    np.testing.assert_allclose(out, rounded, rtol=1e-5, atol=1e-4)  # float32 sums of exact products


def test_bfloat16_gelu_uses_an_erf_as_accurate_as_xlas():
    import math
    from lfvit_jax.models.vit import gelu
    x = np.linspace(-7, 7, 20001, dtype=np.float32)
    true = np.array([math.erf(v) for v in x.astype(np.float64)])
    # Measured: 2.9e-7 at XLA's default optimization (multiply-adds fused), 4.2e-7 at the tests'
    # -O0 (conftest); XLA's own erf 2.3e-7. 3.8 float32 ulps of 1.
    assert np.abs(np.asarray(jax.jit(precision.erf)(x), np.float64) - true).max() < 4.5e-7
    exact = jax.jit(lambda x: nn.gelu(x, approximate=False))(x)
    np.testing.assert_array_equal(gelu(x), exact)  # float32: flax's exact GELU itself
    np.testing.assert_allclose(gelu(x, "bfloat16"), exact, rtol=0, atol=2e-6)


@pytest.mark.slow
def test_bfloat16_training_keeps_float32_state_and_gradients_close():
    config = train_fakes.tiny_config()
    info = train_fakes.get_dataset_info(config.data)
    low_config = train_fakes.tiny_config(precision="bfloat16")
    setup, low = trainer.Setup(config, info), trainer.Setup(low_config, info)
    state = setup.scratch_state()
    batch = next(train_fakes.train_iterator(config.data, config.batch_size, seed=0))

    def grads(task):
        loss = lambda p: task.loss(task.forward(p, batch["image"], train=False, phase="region"),
                                   batch["label"])[0]
        return jax.jit(jax.value_and_grad(loss))(state["params"])
    (l32, g32) = grads(setup.task)
    (l16, g16) = grads(low.task)
    assert setup.task.model.matmul_dtype == "float32" and low.task.model.matmul_dtype == "bfloat16"
    np.testing.assert_allclose(l16, l32, rtol=2e-2)
    flat32, flat16 = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]) for g in (g32, g16))
    assert np.linalg.norm(flat16 - flat32) < 0.05 * np.linalg.norm(flat32)

    new, _ = low.train_step("region")(jax.device_put(jax.device_get(state), low.shardings),
                                      parallel.to_global(batch, parallel.batch_sharding(low.mesh)))
    for leaf in jax.tree.leaves((new["params"], new["opt_state"])):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32


def test_unknown_precision_is_a_clear_error():
    model, variables, ref = load_dump(DUMPS[0])
    images = ref["input_full"].transpose(0, 2, 3, 1)
    with pytest.raises(ValueError, match="matmul_dtype='float16'"):
        model.clone(matmul_dtype="float16").apply(variables, images)


def test_a_runs_precision_is_not_part_of_its_model(tmp_path):
    """eval/predict --precision and a resumed run may change config.precision: it is not a model
    setting (config.model refuses one)."""
    run = train_fakes.tiny_config()
    rundir.write_config(run, tmp_path)
    other = train_fakes.tiny_config(precision="bfloat16")
    rundir.check_same_model(other, tmp_path)
    rundir.check_resumable(other, tmp_path)
    with pytest.raises(ValueError, match="matmul_dtype"):
        tasks.build(dict(other.model, matmul_dtype="bfloat16"))
    other.model.width = 64
    with pytest.raises(ValueError, match=r"model\.width"):
        rundir.check_same_model(other, tmp_path)


# /proc/cpuinfo flag sets: Zen 3 (AVX2 only), Zen 4/5 (avx512_bf16), Sapphire Rapids (both).
AVX2 = {"sse4_2", "avx", "avx2", "fma"}
AVX512_BF16 = AVX2 | {"avx512f", "avx512_bf16"}
AMX = AVX512_BF16 | {"amx_tile", "amx_bf16"}


@pytest.mark.parametrize("flags,platform,want", [
    (AVX2, "cpu", "float32"), (AVX2 | {"avx512f"}, "cpu", "float32"), (set(), "cpu", "float32"),
    (AVX512_BF16, "cpu", "bfloat16"), (AMX - {"avx512_bf16"}, "cpu", "bfloat16"),
    (AMX, "cpu", "bfloat16"), (set(), "gpu", "bfloat16"), (set(), "tpu", "bfloat16")])
def test_auto_picks_bfloat16_only_with_native_bf16_dots(flags, platform, want, caplog):
    dtype, reason = precision.resolve("auto", cpu_flags=flags, platform=platform)
    assert dtype == want and reason.startswith(want) and "\n" not in reason
    assert not caplog.records


@pytest.mark.parametrize("flags,platform,want", [
    (AVX2, "cpu", False), (AVX512_BF16, "cpu", True), (AMX, "cpu", True), (AVX2, "gpu", True)])
def test_float32_heads_layout_follows_the_cpu(monkeypatch, flags, platform, want):
    monkeypatch.setattr(precision, "host_cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(jax, "default_backend", lambda: platform)
    assert precision.heads_einsum("float32") is want
    assert precision.heads_einsum("bfloat16") is False


@pytest.mark.parametrize("asked", ["float32", "bfloat16"])
def test_explicit_precision_is_kept(asked, caplog):
    assert precision.resolve(asked, cpu_flags=AMX, platform="cpu")[0] == asked
    assert precision.resolve(asked, platform="gpu")[0] == asked
    assert precision.resolve("float32", cpu_flags=AVX2, platform="cpu")[0] == "float32"
    assert not caplog.records


def test_bfloat16_without_native_dots_warns_in_one_line(caplog):
    dtype, _ = precision.resolve("bfloat16", cpu_flags=AVX2, platform="cpu")
    assert dtype == "bfloat16"
    [record] = [r for r in caplog.records if r.levelname == "WARNING"]
    message = record.getMessage()
    assert "\n" not in message and "slower than float32" in message


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="'auto', 'float32', 'bfloat16'"):
        precision.resolve("float16", cpu_flags=AVX2, platform="cpu")
