"""Converts an official LF-ViT / CF-ViT checkpoint or a timm DeiT state_dict to the project's
format: an orbax checkpoint of the parameters plus model_config.json, read by `config.init_from`.
"""
import sys

import jax
import numpy as np

from lfvit_jax import tasks
from lfvit_jax.cli import app
from lfvit_jax.weights.pretrained import load_pretrained, save_converted

OVERRIDES = ("name", "num_heads", "region_size", "img_size")


def convert(src, dst, allow_pickle=False, **overrides):
    """Reads `src`, writes `dst`; returns the converted model's config."""
    model, variables = load_pretrained(src, allow_pickle=allow_pickle, **overrides)
    save_converted(dst, model, variables)
    config = tasks.for_model(model).model_config()
    n = sum(np.size(x) for x in jax.tree_util.tree_leaves(variables))
    print(f"Wrote {dst}: {n:,} parameters, config {config}")
    return config


def define_flags(fv, argv):
    del argv
    from absl import flags
    d = dict(flag_values=fv)
    flags.DEFINE_string("src", None, ".pth/.pt state_dict or checkpoint, or .npz of state_dict "
                        "arrays", **d)
    flags.DEFINE_string("dst", None, "new directory for the converted checkpoint", **d)
    flags.DEFINE_enum("name", None, ["lfvit", "deit"], "model to build (default: lfvit)", **d)
    flags.DEFINE_integer("num_heads", None, "needed when the width is not DeiT Ti/S/B's", **d)
    flags.DEFINE_integer("region_size", None, "region side m (not stored in the weights)", **d)
    flags.DEFINE_integer("img_size", None, "resolution for a DeiT state_dict (resamples "
                         "pos_embed)", **d)
    flags.DEFINE_bool("allow_pickle", False, "read .pth files that hold Python objects besides "
                      "tensors (trusted files only)", **d)
    flags.mark_flags_as_required(["src", "dst"], **d)


def main(FLAGS):
    convert(FLAGS.src, FLAGS.dst, FLAGS.allow_pickle,
            **{k: FLAGS[k].value for k in OVERRIDES if FLAGS[k].value is not None})


if __name__ == "__main__":
    sys.exit(app.run(define_flags, main))
