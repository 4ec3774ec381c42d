"""A small LF-ViT on the embedded cluttered MNIST (64 px canvases): trains and evaluates in 8-10
minutes on 2 CPU cores, depending on the CPU. `baseline` trains a plain ViT of the same size on
the full 64 px image for the same number of steps, for comparison.

It departs from the release's training in two options, measured on this demo in
docs/training-fidelity.md: `model.whole_pos_embed=True` (position embeddings in the whole-image
phase) and `lr_schedule='step'` (the learning rate per update, not per epoch).

Arguments: baseline, runlocal, m=<region side in coarse tokens>, alpha=<refined fraction of the
region>, epochs=<training epochs>.

  lfvit train --config demo --workdir workdirs/demo
  lfvit train --config demo:baseline --workdir workdirs/demo_baseline
  lfvit match --workdir workdirs/demo --baseline workdirs/demo_baseline   # FLOPs at equal accuracy
  lfvit train --config demo:runlocal --workdir /tmp/demo_runlocal
"""
import ml_collections

from lfvit_jax.core import config_args
from lfvit_jax.data import defaults
from lfvit_jax.training import recipes


def get_config(arg=None):
    given = config_args.given(arg)
    arg = config_args.parse_arg(arg, baseline=False, runlocal=False, m=3, alpha=0.5, epochs=60.0)
    config = ml_collections.ConfigDict()
    # 64 px canvas, patch 8: an 8x8 fine grid, a 4x4 coarse grid (32 px copy), 2x2 windows of
    # m=3 (48 px of the canvas): every 28 px digit fits one of them, where only 79% fit one of
    # m=2's 32 px windows; m=3 also lifted the region hit rate from ~80% to 95.6% in a third of
    # the run.
    config.model = ml_collections.ConfigDict(dict(
        name="deit" if arg.baseline else "lfvit",
        num_classes=10,
        img_size=64,
        patch=8,
        width=64,
        depth=4,
        num_heads=2,
        mlp_dim=128,  # 2x width, not 4x: cheaper steps learn more within the time budget
        drop_path=0.0,
        # Dense kernels with variance 1/fan_in: the release's trunc_normal(.02) is 6x smaller at
        # width 64, and the baseline then needed about twice the steps to the same accuracy.
        dense_init="lecun",
    ))
    if not arg.baseline:
        # alpha 0.5 refines 5 of the region's 9 coarse tokens (a 28 px digit covers about 2x2 of
        # them): stage 2 sees 32 tokens instead of 44, 0.751 of the baseline's FLOPs with both
        # stages instead of 0.929; measured at 60 epochs, focus top-1 76.7% (alpha 1: 77.6%).
        # whole_pos_embed: our option, not the release's whole-image phase (no position
        # embedding there); see docs/training-fidelity.md for what it is worth here.
        config.model.update(region_size=arg.m, alpha=arg.alpha, beta=0.99, gca_blocks=(1, 2, 3),
                            region_method="ngca", fusion=True, reuse_tokens=True,
                            whole_pos_embed=True)
    config.data = defaults.cluttered_mnist_config()
    # Short runs gain from switching to the (cheaper) region steps early: 20% instead of 77%
    # (from 30%: 66 s less on an AVX2 EPYC, focus top-1 76.4% against 76.7-77.9%).
    recipes.deit_training(config, total_epochs=arg.epochs,
                          selection_start_epoch=0.2 * arg.epochs)
    # The paper's CE + CE: the localization stage learns from the labels directly instead of only
    # from the focus stage through KL, and is what early exit relies on (60 epochs: localization
    # top-1 67.5% against 60.2% with the release's CE + KL, focus 77.6% / 76.9%).
    config.loss = "ce_ce"
    # Peak lr 2e-3 (= lr * batch / 512): short runs of small ViTs want a high rate and many steps.
    # lr per update (our option): the release's per-epoch steps would hold epochs 0 and 1 at
    # warmup_lr and then jump to the peak, a 1-epoch warm-up lost.
    config.lr_schedule = "step"
    config.update(batch_size=64, eval_batch_size=200, warmup_epochs=1.0, lr=1.6e-2,
                  precision="float32", log_every_steps=50, eval_every_epochs=arg.epochs / 3,
                  checkpoint_every_steps=200)
    if arg.runlocal:
        recipes.runlocal(config, given)
    return config
