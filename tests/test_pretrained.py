"""Checkpoint loading (official LF-ViT, timm DeiT, .pth/.npz, converted orbax) and its errors."""
import argparse
import collections
import logging
import os

import jax
import numpy as np
import pytest

from lfvit_jax.core.config_args import load_config
from lfvit_jax.tasks import kinds
from lfvit_jax.weights import loading, pretrained
from lfvit_jax.io.state_dict import resample_pos_embed
from lfvit_jax.weights.pretrained import load_pretrained

WEIGHTS = os.path.join(os.path.dirname(__file__), "testdata", "tiny_7x7_m4", "weights.npz")


@pytest.fixture(scope="module")
def state_dict():
    with np.load(WEIGHTS) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def images():
    return jax.random.normal(jax.random.key(0), (2, 224, 224, 3))


def save_npz(tmp_path, sd, name="sd.npz"):
    path = str(tmp_path / name)
    np.savez(path, **sd)
    return path


def deit_state_dict(sd):
    """The tiny LF-ViT weights as a timm DeiT state_dict (one pos_embed, no reuse block)."""
    out = {k: v for k, v in sd.items() if not k.startswith(("pos_embed_list", "reuse_block"))}
    out["pos_embed"] = sd["pos_embed_list.1"]
    return out


def test_names_and_layouts_follow_the_rule(state_dict):
    _, variables = load_pretrained(WEIGHTS, num_heads=3)
    p = variables["params"]
    np.testing.assert_array_equal(p["blocks_3"]["attn"]["qkv"]["kernel"],
                                  state_dict["blocks.3.attn.qkv.weight"].T)
    np.testing.assert_array_equal(p["patch_embed"]["proj"]["kernel"],
                                  state_dict["patch_embed.proj.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(p["reuse_block_0"]["scale"], state_dict["reuse_block.0.weight"])
    np.testing.assert_array_equal(p["reuse_block_1"]["fc2"]["bias"],
                                  state_dict["reuse_block.1.fc2.bias"])
    np.testing.assert_array_equal(p["pos_embed_list_0"], state_dict["pos_embed_list.0"])


@pytest.mark.slow
def test_deit_state_dict_into_lfvit(tmp_path, state_dict, caplog):
    sd = deit_state_dict(state_dict)
    with caplog.at_level(logging.WARNING):
        model, variables = load_pretrained(save_npz(tmp_path, sd), num_heads=3)
    assert "reuse block is freshly initialised" in caplog.text
    p = variables["params"]
    assert model.img_size == 224 and model.h1 == 7
    np.testing.assert_array_equal(p["pos_embed_list_1"], sd["pos_embed"])
    np.testing.assert_allclose(p["pos_embed_list_0"], resample_pos_embed(sd["pos_embed"], 7))
    # The resampled grid keeps the cls slot and interpolates the patch slots.
    np.testing.assert_array_equal(p["pos_embed_list_0"][:, 0], sd["pos_embed"][:, 0])
    assert p["reuse_block_1"]["fc1"]["kernel"].shape == (48, 192)


@pytest.mark.slow
def test_deit_state_dict_at_another_resolution(tmp_path, state_dict):
    path = save_npz(tmp_path, deit_state_dict(state_dict))
    model, variables = load_pretrained(path, num_heads=3, img_size=288, region_size=6)
    assert variables["params"]["pos_embed_list_1"].shape == (1, 1 + 18 * 18, 48)
    assert variables["params"]["pos_embed_list_0"].shape == (1, 1 + 9 * 9, 48)
    assert model.h1 == 9


@pytest.mark.slow
def test_deit_state_dict_as_deit(tmp_path, state_dict, images):
    sd = deit_state_dict(state_dict)
    model, variables = load_pretrained(save_npz(tmp_path, sd), num_heads=3, name="deit")
    # The DeiT's pos_embed is pos_embed_list.1, which only this option adds in the whole phase.
    lf_model, lf_vars = load_pretrained(WEIGHTS, num_heads=3, fusion=False, whole_pos_embed=True)
    logits = model.apply(variables, images)["logits"]
    whole = lf_model.apply(lf_vars, images, focus="whole")["focus_logits"]
    np.testing.assert_allclose(logits, whole, atol=1e-5)


@pytest.mark.parametrize("edit,overrides,match", [
    (lambda sd: sd, dict(num_heads=3, num_classes=1000), "num_classes=1000 was asked"),
    (lambda sd: sd, dict(num_heads=3, img_size=288), "img_size=288 was asked"),
    (lambda sd: sd, {}, "Cannot infer num_heads from width 48"),
    (lambda sd: {k: v for k, v in sd.items() if k != "blocks.0.norm1.bias"}, dict(num_heads=3),
     "missing from the checkpoint: \\['blocks_0/norm1/bias'\\]"),
    (lambda sd: dict(sd, dist_token=sd["cls_token"]), dict(num_heads=3),
     "Distilled DeiT checkpoints"),
    (lambda sd: dict(sd, extra=sd["cls_token"]), dict(num_heads=3),
     "not used by the model: \\['extra'\\]"),
    (lambda sd: dict(sd, **{"head.bias": np.zeros(7, np.float32)}), dict(num_heads=3),
     "shape mismatch.*head.bias"),
])
def test_mismatched_checkpoints_are_errors(tmp_path, state_dict, edit, overrides, match):
    path = save_npz(tmp_path, edit(state_dict))
    with pytest.raises(ValueError, match=match):
        load_pretrained(path, **overrides)


def test_unknown_file_type(tmp_path):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="Unrecognised checkpoint"):
        load_pretrained(str(path))


@pytest.mark.slow
def test_convert_round_trip(tmp_path, images):
    dst = str(tmp_path / "converted")
    config, count = pretrained.convert(WEIGHTS, dst, num_heads=3, region_size=4)
    assert count == 407_434 and config["region_size"] == 4
    model, variables = load_pretrained(dst)
    ref_model, ref_vars = load_pretrained(WEIGHTS, num_heads=3, region_size=4)
    assert model == ref_model
    out, ref = model.apply(variables, images), ref_model.apply(ref_vars, images)
    np.testing.assert_array_equal(out["focus_logits"], ref["focus_logits"])
    # Settings that do not change shapes can be overridden at load time.
    m3, _ = load_pretrained(dst, region_size=3)
    assert m3.region_size == 3
    with pytest.raises(ValueError, match="Could not restore"):
        load_pretrained(dst, img_size=288)
    with pytest.raises(ValueError, match="exists"):
        pretrained.convert(WEIGHTS, dst, num_heads=3)


def test_corrupt_converted_checkpoint_is_detected(tmp_path):
    dst = str(tmp_path / "converted")
    pretrained.convert(WEIGHTS, dst, num_heads=3)
    for root, _, files in os.walk(os.path.join(dst, "params")):
        for f in files:
            if "ocdbt" in root and f.startswith("d"):
                continue
            path = os.path.join(root, f)
            if os.path.getsize(path) > 1000:
                with open(path, "r+b") as fh:
                    fh.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ValueError, match="Could not restore"):
        load_pretrained(dst)


def test_pth_files(tmp_path, state_dict):
    torch = pytest.importorskip("torch")
    tensors = {k: torch.from_numpy(v) for k, v in state_dict.items()}
    bare = str(tmp_path / "bare.pth")
    torch.save(tensors, bare)
    official = str(tmp_path / "official.pth")
    torch.save({"model": tensors, "flops": [1.0, 2.0], "args": argparse.Namespace(lr=1)}, official)
    _, ref = load_pretrained(WEIGHTS, num_heads=3)
    for path, kwargs in ((bare, {}), (official, {"allow_pickle": True})):
        _, variables = load_pretrained(path, num_heads=3, **kwargs)
        jax.tree_util.tree_map(np.testing.assert_array_equal, variables, ref)
    with pytest.raises(ValueError, match="allow_pickle=True"):
        load_pretrained(official, num_heads=3)


def test_loading_weights_compiles_nothing_and_traces_the_model_once(tmp_path):
    """Predict's cold start: the parameters' shapes come from one trace of init (shared by the
    config's model and the file's), and the arrays go to the devices without compilations."""
    config = load_config("lfvit_deit_s.py:res=224,m=4")
    with config.unlocked():
        config.model.update(width=48, num_heads=3, mlp_dim=192, num_classes=10)
        config.init_from = WEIGHTS
    events = collections.Counter()

    def listen(event, seconds, **kwargs):
        events[event] += 1
    kinds._abstract_params.cache_clear()
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        loaded = loading.load(config, str(tmp_path / "no_run"))
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert dict(events) == {"/jax/core/compile/jaxpr_trace_duration": 1}
    with np.load(WEIGHTS) as f:
        np.testing.assert_array_equal(loaded.params["head"]["kernel"], f["head.weight"].T)
