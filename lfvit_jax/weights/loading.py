"""Parameters alone, for evaluation and prediction: no optimizer, schedule or dataset. `load`
follows the resume order (workdir checkpoint, newest intact step; config.resume; config.init_from)
and restores straight into the model's abstract parameters with their shardings.
"""
import dataclasses
from typing import Any

import jax
from etils import epath

from lfvit_jax import tasks
from lfvit_jax.core import parallel
from lfvit_jax.io import checkpoint
from lfvit_jax.weights.pretrained import load_pretrained


@dataclasses.dataclass
class Loaded:
    task: Any
    params: Any
    origin: str  # where the parameters came from, for messages
    step: int


def pretrained_params(config, task, target):
    """config.init_from's parameters as global arrays shaped and sharded like `target`."""
    overrides = {k: v for k, v in dict(config.model).items() if k != "variant"}
    _, variables = load_pretrained(config.init_from, **overrides)
    checkpoint.check_shapes(variables["params"], target, f"config.init_from={config.init_from}")
    return parallel.put_global(variables["params"], jax.tree.map(lambda x: x.sharding, target))


def _restore(directory, steps, which, target):
    """(step, params, key): a named step, or the newest intact one ('latest', 'best')."""
    if which in ("latest", "best"):
        step, (params, key), _ = checkpoint.newest_intact(
            directory, steps, lambda s: checkpoint.restore_params(directory, s, target))
        return step, params, key
    if int(which) not in steps:
        raise ValueError(f"No step {which} in {directory}; it holds {sorted(steps)}.")
    return (int(which),) + checkpoint.restore_params(directory, int(which), target)


def load(config, workdir=None, which="latest", mesh=None):
    """A `Loaded` task with its parameters; `which` is 'latest', 'best' or a step number."""
    task = tasks.build(config.model, config.get("precision", "float32"))
    shapes = task.abstract_params()
    target = checkpoint.abstract_with_shardings(shapes, parallel.state_shardings(
        shapes, mesh or parallel.make_mesh(), config.get("param_sharding", "replicated")))
    folder = checkpoint.BEST_DIR if which == "best" else checkpoint.CHECKPOINTS_DIR
    for run in filter(None, (workdir, config.get("resume"))):
        directory = epath.Path(run) / folder
        steps = checkpoint.steps(directory)
        if steps:
            step, params, key = _restore(directory, steps, which, target)
            return Loaded(task, params, f"{directory}/{step} ({key})", step)
        if run == config.get("resume") or which != "latest":
            raise ValueError(f"No checkpoint under {directory} (asked for: {which}).")
    if config.get("init_from"):
        return Loaded(task, pretrained_params(config, task, target),
                      f"init_from {config.init_from}", 0)
    raise ValueError(f"No weights to use: no checkpoint in {epath.Path(workdir) / folder} and no "
                     "config.resume or config.init_from.")
