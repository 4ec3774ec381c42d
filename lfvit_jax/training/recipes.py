"""Sections shared by the configs: the DeiT-S model, DeiT's recipe and the `runlocal` shrink."""
import ml_collections

from lfvit_jax.data import defaults
from lfvit_jax.core.errors import UsageError
from lfvit_jax.models.vit import VARIANTS

RUNLOCAL_COARSE = 4  # runlocal's coarse grid side: 64 px, patch 8, coarse tokens of 2x2 patches


def deit_s_model(name, img_size, **extra):
    """The DeiT-S backbone (`VARIANTS['S']`, MLP 4x, patch 16) as a `config.model`."""
    width, depth, heads = VARIANTS["S"]
    return ml_collections.ConfigDict(dict(
        name=name, num_classes=1000, img_size=img_size, patch=16, width=width, depth=depth,
        num_heads=heads, mlp_dim=4 * width, drop_path=0.1, **extra))


def deit_training(config, *, total_epochs=300, selection_start_epoch=231):
    """DeiT's optimizer and schedule (algorithm doc, section 10) plus loop settings."""
    config.batch_size = 1024  # global; lr scales with batch / 512
    config.eval_batch_size = 1000
    config.total_epochs = float(total_epochs)
    # Typed defaults (not None) so that --config.x=... can override them from the command line.
    config.total_steps = 0  # > 0: run this many steps, epoch-based settings scaled to fit
    config.warmup_epochs = 5.0
    # Whole-image focus before this epoch, NGCA region selection from it (release: 231 of 300).
    config.selection_start_epoch = float(selection_start_epoch)
    config.update(lr=5e-4, warmup_lr=1e-6, min_lr=1e-5, wd=0.05, adam_eps=1e-8)
    # 'epoch': timm's cosine stepped after each epoch, as the release; 'step': per update (ours).
    config.lr_schedule = "epoch"
    config.loss = "ce_kl"  # or 'ce_ce', the paper's ablation
    config.grad_accum = 1
    # Operands of every matmul in training and its evaluations (float32 accumulation; see
    # models/precision.py): the release trains with mixed precision.
    config.precision = "bfloat16"
    # 0 = off, as the release in effect: it keeps an EMA (decay 0.99996) but never evaluates it.
    config.ema_decay = 0.0
    config.param_sharding = "replicated"  # or 'fsdp'
    # Evaluated after every epoch as the release (best checkpoint by focus top-1): the 50k
    # validation images cost about 1.3% of an ImageNet epoch's training FLOPs.
    config.update(seed=0, log_every_steps=100, eval_every_epochs=1.0, checkpoint_every_steps=1000,
                  keep_checkpoints=3)
    config.eval_thresholds = (0.5, 0.6, 0.7, 0.76, 0.8, 0.9, 1.0)
    config.resume = ""  # another workdir to continue from (full state and data stream)
    config.init_from = ""  # params-only start: converted / official LF-ViT or timm DeiT weights
    return config


def runlocal(config, given=()):
    """Eight steps of a tiny model on the embedded cluttered MNIST (64 px): a smoke test of any
    config's code path. `given` (the arguments set explicitly): an explicit m is kept if it fits the
    4x4 coarse grid, an explicit res is refused."""
    if "res" in given:
        raise UsageError("runlocal trains at 64 px, so it takes no res=...; drop one of them.")
    if "m" in given and not 1 <= config.model.region_size <= RUNLOCAL_COARSE:
        raise UsageError(f"m={config.model.region_size} does not fit runlocal's "
                         f"{RUNLOCAL_COARSE}x{RUNLOCAL_COARSE} coarse grid; use m in "
                         f"[1, {RUNLOCAL_COARSE}].")
    config.data = defaults.cluttered_mnist_config()
    config.model.update(num_classes=10, img_size=64, patch=8, width=32, depth=2, num_heads=2,
                        mlp_dim=64)
    if "region_size" in config.model:  # a model with regions: fit them to the tiny grid
        config.model.update(gca_blocks=(0, 1))
        if "m" not in given:
            config.model.region_size = 2
    config.update(batch_size=16, eval_batch_size=200, total_steps=8, log_every_steps=2,
                  checkpoint_every_steps=4, precision="float32")
    config.eval_every_epochs = config.total_epochs  # once, at the end
    return config
