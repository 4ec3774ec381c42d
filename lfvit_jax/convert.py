"""Converts an official LF-ViT / CF-ViT checkpoint or a timm DeiT state_dict to the project's format.

  python -m lfvit_jax.convert lfvit_deit_s_224.pth converted/lfvit_s224 --allow_pickle
  python -m lfvit_jax.convert deit_small_patch16_224.pth converted/deit_s_init   # -> LF-ViT
  python -m lfvit_jax.convert weights.npz converted/tiny --num_heads 3

The destination is an orbax checkpoint of the parameters plus model_config.json; load it with
`lfvit_jax.load_pretrained(DST)` or `config.init_from`.
"""
import argparse

import jax
import numpy as np

from lfvit_jax.pretrained import load_pretrained, model_config, save_converted


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("src", help=".pth/.pt state_dict or checkpoint, or .npz of state_dict arrays")
    p.add_argument("dst", help="new directory for the converted checkpoint")
    p.add_argument("--name", choices=["lfvit", "deit"], help="model to build (default: lfvit)")
    p.add_argument("--num_heads", type=int, help="needed when the width is not DeiT Ti/S/B's")
    p.add_argument("--region_size", type=int, help="region side m (not stored in the weights)")
    p.add_argument("--img_size", type=int, help="resolution for a DeiT state_dict (resamples pos_embed)")
    p.add_argument("--allow_pickle", action="store_true",
                   help="read .pth files that hold Python objects besides tensors (trusted files only)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    overrides = {k: v for k in ("name", "num_heads", "region_size", "img_size")
                 if (v := getattr(args, k)) is not None}
    model, variables = load_pretrained(args.src, allow_pickle=args.allow_pickle, **overrides)
    n = sum(np.size(x) for x in jax.tree_util.tree_leaves(variables))
    save_converted(args.dst, model, variables)
    print(f"Wrote {args.dst}: {n:,} parameters, config {model_config(model)}")


if __name__ == "__main__":
    main()
