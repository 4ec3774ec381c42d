"""Copies the parity vectors the tests use from shared/parity into tests/testdata.

Keeps the weights and the inputs, outputs and selection indices; drops the per-block hidden
states, which only help to localise a discrepancy (see shared/parity/README.md). The one-step
training vectors (GRAD_DUMP) are copied whole.
Run from the repository root: python tests/testdata/make_parity_subset.py ../shared/parity
"""
import os
import shutil
import sys

import numpy as np

DUMPS = ("tiny_7x7_m5_stress", "tiny_7x7_m4", "tiny_9x9_m6")
GRAD_DUMP = "grad_tiny_7x7_m5"
KEYS = ("input_full", "input_loc", "region_size", "threshold", "loc_logits", "focus_logits",
        "gca_cls_attn", "region_scores", "region_index", "topk_coarse_idx", "focus_fine_idx",
        "focus_tokens_in", "exit_at_loc", "final_logits", "final_pred")


def main(src):
    here = os.path.dirname(os.path.abspath(__file__))
    for name in DUMPS:
        dst = os.path.join(here, name)
        os.makedirs(dst, exist_ok=True)
        shutil.copy(os.path.join(src, name, "weights.npz"), dst)
        with np.load(os.path.join(src, name, "reference.npz")) as ref:
            np.savez_compressed(os.path.join(dst, "reference.npz"), **{k: ref[k] for k in KEYS})
    dst = os.path.join(here, GRAD_DUMP)
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(os.path.join(src, GRAD_DUMP)):
        shutil.copyfile(os.path.join(src, GRAD_DUMP, name), os.path.join(dst, name))


if __name__ == "__main__":
    main(sys.argv[1])
