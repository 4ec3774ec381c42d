"""The release's side of `benchmarks/train_parity.py`: run by the release's Python (with torch),
never imported by lfvit_jax.

  RELEASE_DIR/venv/bin/python benchmarks/train_parity_release.py RELEASE_DIR WORK_DIR

RELEASE_DIR holds ref_env.py and the release's sources (shared/reference/README.md). Reads
WORK_DIR/run.json and WORK_DIR/batches.npz, trains the release's LFVisionTransformer as
main_deit.py and engine_deit.py do: optimizer and lr scheduler from its vendored timm factories
(create_optimizer, create_scheduler) with main_deit.py's defaults, the scheduler stepped after
each epoch, selection switched on at the epoch it starts; float32, drop path off (it is random).
Writes WORK_DIR/release.json: the loss and learning rate of every step.
"""
import argparse
import importlib
import importlib.util
import json
import os
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F


def _ref_env(release_dir):
    spec = importlib.util.spec_from_file_location("ref_env", os.path.join(release_dir,
                                                                         "ref_env.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _timm_factory(src, package):
    """The vendored timm.optim / timm.scheduler factory, without timm/__init__.py (which needs
    torchvision): the package is registered by path, its modules load as they are."""
    name = f"timm.{package}"
    if name not in sys.modules:
        stub = types.ModuleType(name)
        stub.__path__ = [os.path.join(src, "timm", package)]
        sys.modules[name] = stub
    return importlib.import_module(f"{name}.{package}_factory")


def release_args(run):
    """main_deit.py's argument defaults that the two factories read, lr already scaled."""
    return argparse.Namespace(
        opt="adamw", opt_eps=1e-8, opt_betas=None, momentum=0.9, weight_decay=0.05,
        lr=run["peak_lr"], sched="cosine", epochs=run["epochs"], min_lr=1e-5, warmup_lr=1e-6,
        warmup_epochs=run["warmup_epochs"], decay_rate=0.1, cooldown_epochs=10, lr_noise=None,
        lr_noise_pct=0.67, lr_noise_std=1.0, seed=0)


def main(release_dir, work_dir):
    ref_env = _ref_env(release_dir)
    with open(os.path.join(work_dir, "run.json")) as f:
        run = json.load(f)
    torch.set_num_threads(run.get("threads") or torch.get_num_threads())
    model = ref_env.build_model(loc_size=7, region_size=run["region_size"], embed_dim=48,
                                num_heads=3, num_classes=10)
    with np.load(run["weights"]) as f:
        model.load_state_dict({k: torch.from_numpy(f[k]) for k in f.files})
    for module in model.modules():
        if hasattr(module, "drop_prob"):
            module.drop_prob = 0.0
    model.train()
    args = release_args(run)
    optimizer = _timm_factory(ref_env.SRC, "optim").create_optimizer(args, model)
    scheduler, _ = _timm_factory(ref_env.SRC, "scheduler").create_scheduler(args, optimizer)
    with np.load(os.path.join(work_dir, "batches.npz")) as f:
        images, targets = f["images"], f["targets"]
    kl_div = torch.nn.KLDivLoss(reduction="batchmean")
    losses, lrs, step = [], [], 0
    selection_epoch = run["selection_start"] // run["steps_per_epoch"]
    for epoch in range(run["epochs"]):
        # main_deit.py: `if epoch > 230:` switches selection on, i.e. from epoch 231.
        model.apply(lambda m: setattr(m, "informative_selection", epoch >= selection_epoch))
        for _ in range(run["steps_per_epoch"]):
            x = torch.from_numpy(images[step].astype(np.float32))
            t = torch.from_numpy(targets[step])
            x_loc = F.interpolate(x, (112, 112), mode="bilinear", align_corners=True)
            loc, focus = model([x_loc, x])
            ce = torch.sum(-t * F.log_softmax(focus, dim=-1), dim=-1).mean()
            loss = ce + kl_div(F.log_softmax(loc, dim=1), F.softmax(focus.detach(), dim=1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            lrs.append(optimizer.param_groups[0]["lr"])
            step += 1
        scheduler.step(epoch)
    with open(os.path.join(work_dir, "release.json"), "w") as f:
        json.dump({"loss": losses, "lr": lrs, "torch": torch.__version__}, f)


if __name__ == "__main__":
    main(*sys.argv[1:3])
