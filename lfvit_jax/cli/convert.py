"""Convert official LF-ViT or timm DeiT weights to this project's format.

The format is an orbax checkpoint of the parameters plus model_config.json, which config.init_from
and load_pretrained read without PyTorch.

  lfvit convert --src lfvit_s224.pth --dst converted/lfvit_s224 --region_size 5
"""
from absl import flags

from lfvit_jax.io import storage
from lfvit_jax.weights import pretrained

REQUIRED = ("src", "dst")
OVERRIDES = ("name", "num_heads", "region_size", "img_size")


def define_flags(fv):
    d = dict(flag_values=fv)
    flags.DEFINE_string("src", None, ".pth/.pt state_dict or checkpoint, or .npz of state_dict "
                        "arrays", **d)
    flags.DEFINE_string("dst", None, "new folder for the converted checkpoint", **d)
    flags.DEFINE_enum("name", None, ["lfvit", "deit"], "model to build (default: lfvit)", **d)
    flags.DEFINE_integer("num_heads", None, "needed when the width is not DeiT Ti/S/B's", **d)
    flags.DEFINE_integer("region_size", None, "region side m (not stored in the weights)", **d)
    flags.DEFINE_integer("img_size", None, "resolution for a DeiT state_dict (resamples "
                         "pos_embed)", **d)
    flags.DEFINE_bool("allow_pickle", False, "read .pth files that hold Python objects besides "
                      "tensors (trusted files only)", **d)


def main(FLAGS, overrides, args):
    del overrides, args
    storage.check_reachable(FLAGS.src, FLAGS.dst)
    config, count = pretrained.convert(
        FLAGS.src, FLAGS.dst, FLAGS.allow_pickle,
        **{k: FLAGS[k].value for k in OVERRIDES if FLAGS[k].value is not None})
    print(f"Wrote {FLAGS.dst}: {count:,} parameters, config {config}")
