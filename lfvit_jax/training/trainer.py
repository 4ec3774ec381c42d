"""The training loop (algorithm doc, section 10): jit over a 1-D device mesh, orbax checkpoints,
exact resume. It holds a task (`lfvit_jax.tasks`) and a dataset (sizes and iterators; tests pass a
synthetic one), and knows neither the model kind nor where the data lives.
"""
import json
import logging
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import optax

from lfvit_jax import tasks
from lfvit_jax.core import parallel
from lfvit_jax.core.errors import UsageError
from lfvit_jax.data.pipeline import Dataset
from lfvit_jax.evaluation import evaluate, reports
from lfvit_jax.io import checkpoint, rundir
from lfvit_jax.models import precision
from lfvit_jax.training import metrics, optim, recipes
from lfvit_jax.training.preemption import PreemptionFlag
from lfvit_jax.weights import loading

log = logging.getLogger(__name__)

# Every top-level config key the loop reads (the recipe's, plus the two sections); anything
# else is a typo and an error.
CONFIG_KEYS = frozenset({"model", "data"} | set(recipes.deit_training(ml_collections.ConfigDict())))


class NonFiniteLossError(FloatingPointError):
    pass


def check_config(config):
    unknown = sorted(set(config.keys()) - CONFIG_KEYS)
    if unknown:
        raise UsageError(f"Unknown config keys {unknown}; the training loop reads "
                         f"{sorted(CONFIG_KEYS)}. Fix the spelling in the config file.")
    if config.precision not in precision.MATMUL_DTYPES:
        raise UsageError(f"config.precision={config.precision!r} is not one of "
                         f"{sorted(precision.MATMUL_DTYPES)}.")
    precision.resolve(config.precision)  # warns where bfloat16 runs slower than float32
    for key in ("batch_size", "eval_batch_size", "grad_accum"):
        if config[key] < 1:
            raise UsageError(f"config.{key}={config[key]} must be at least 1.")


class Schedule:
    """Epoch-based settings as step counts; with `config.total_steps`, every one keeps its fraction
    of `total_epochs` (so selection starts at 231/300 of any run by default)."""

    def __init__(self, config, train_examples):
        if config.batch_size > train_examples:
            raise UsageError(f"config.batch_size={config.batch_size} exceeds the "
                             f"{train_examples} training examples.")
        self.steps_per_epoch = train_examples // config.batch_size
        self.per_epoch = (config.total_steps / config.total_epochs if config.total_steps
                          else self.steps_per_epoch)  # steps an epoch, for the lr schedule
        to_steps = lambda epochs: int(round(epochs * self.per_epoch))
        self.total = max(to_steps(config.total_epochs), 1)
        self.selection_start = to_steps(config.selection_start_epoch)
        self.eval_every = max(to_steps(config.eval_every_epochs), 1)


def make_train_step(task, tx, lr_fn, config, mesh, state_shardings, phase):
    """A jitted, state-donating update on one global batch (split into `grad_accum` parts); its
    matmuls take `config.precision` operands, parameters and optimizer state stay float32."""
    accum = config.grad_accum
    base_key = jax.random.key(config.seed)
    batch_spec = parallel.batch_sharding(mesh)
    idle = task.idle_params(phase)

    def loss_fn(params, images, targets, rng):
        out = task.forward(params, images, train=True, phase=phase, rng=rng)
        return task.loss(out, targets, config.loss)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step_fn(state, batch):
        rng = jax.random.fold_in(base_key, state["step"])
        if accum == 1:
            (loss, terms), grads = grad_fn(state["params"], batch["image"], batch["label"], rng)
        else:
            # Rows a, a+A, a+2A, ... form micro-batch a: each device keeps its own rows.
            def split(x):
                x = x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1)
                return jax.lax.with_sharding_constraint(
                    x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data")))
            micro = jax.tree.map(split, {"image": batch["image"], "label": batch["label"]})

            def body(carry, xs):
                i, mb = xs
                out = grad_fn(state["params"], mb["image"], mb["label"], jax.random.fold_in(rng, i))
                return jax.tree.map(jnp.add, carry, out), None
            zeros = jax.tree.map(lambda z: jnp.zeros(z.shape, z.dtype), jax.eval_shape(
                grad_fn, state["params"], batch["image"][:1], batch["label"][:1], rng))
            total, _ = jax.lax.scan(body, zeros, (jnp.arange(accum), micro))
            ((loss, terms), grads) = jax.tree.map(lambda x: x / accum, total)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"], idle=idle)
        params = optax.apply_updates(state["params"], updates)
        new = {"step": state["step"] + 1, "params": params, "opt_state": opt_state}
        if "ema" in state:
            d = config.ema_decay
            new["ema"] = jax.tree.map(lambda e, p: d * e + (1 - d) * p, state["ema"], params)
        out = {"loss": loss, **terms, "lr": lr_fn(state["step"]),
               "grad_norm": optax.tree.norm(grads)}
        return new, out

    return jax.jit(step_fn, in_shardings=(state_shardings, batch_spec),
                   out_shardings=(state_shardings, parallel.replicated(mesh)), donate_argnums=0)


class Setup:
    """Everything a run needs besides the data stream: mesh, task, optimizer, shardings."""

    def __init__(self, config, info, mesh=None):
        check_config(config)
        self.config = config
        model_cfg = config.model
        for key, value in (("num_classes", info["num_classes"]), ("img_size", info["image_size"])):
            if model_cfg[key] != value:
                raise UsageError(f"config.model.{key}={model_cfg[key]} but the dataset has "
                                 f"{key}={value}; make them agree.")
        self.mesh = mesh or parallel.make_mesh()
        parallel.check_batch(config.batch_size, self.mesh, config.grad_accum)
        parallel.check_batch(config.eval_batch_size, self.mesh, name="config.eval_batch_size")
        self.task = tasks.build(model_cfg, config.precision)
        self.schedule = Schedule(config, info["train_examples"])
        self.lr_fn = optim.schedule(config, self.schedule.per_epoch)
        self.tx = optim.optimizer(config, self.lr_fn)
        self.abstract_state = jax.eval_shape(self._init_state, jax.random.key(0))
        self.shardings = parallel.state_shardings(self.abstract_state, self.mesh,
                                                  config.param_sharding)
        self._steps, self._eval_steps = {}, {}

    def _state_from_params(self, params):
        state = {"step": jnp.zeros((), jnp.int32), "params": params,
                 "opt_state": self.tx.init(params)}
        if self.config.ema_decay:
            # A copy, not the same buffer: the donated step must not receive one buffer twice.
            state["ema"] = jax.tree.map(jnp.copy, params)
        return state

    def _init_state(self, rng):
        return self._state_from_params(self.task.init_params(rng))

    def scratch_state(self):
        rng = jax.random.fold_in(jax.random.key(self.config.seed), 1 << 20)
        return jax.jit(self._init_state, out_shardings=self.shardings)(rng)

    def state_from_pretrained(self):
        """Params-only start from config.init_from (converted / official / timm); step 0."""
        target = checkpoint.abstract_with_shardings(self.abstract_state["params"],
                                                    self.shardings["params"])
        params = loading.pretrained_params(self.config, self.task, target)
        return jax.jit(self._state_from_params, out_shardings=self.shardings)(params)

    def phase(self, step):
        return self.task.phase(step, self.schedule.selection_start)

    def has_step(self, phase):
        return phase in self._steps

    def train_step(self, phase):
        """The jitted step of a phase ('whole', 'region' or, for DeiT, 'full'), built once."""
        if phase not in self._steps:
            self._steps[phase] = make_train_step(self.task, self.tx, self.lr_fn, self.config,
                                                 self.mesh, self.shardings, phase)
        return self._steps[phase]

    def eval_phase(self, step):
        """The release evaluates after each epoch with the forward it trained that epoch with:
        focus on the whole image until selection starts."""
        return self.phase(max(step - 1, 0))

    def eval_step(self, phase):
        if phase not in self._eval_steps:
            self._eval_steps[phase] = evaluate.make_eval_step(
                self.task, self.shardings["params"], self.mesh, phase)
        return self._eval_steps[phase]

    def eval_params(self, state):
        return state["ema"] if "ema" in state else state["params"]


def initial_state(setup, mngr, data_iter):
    """The resume order: workdir checkpoint > config.resume > config.init_from > scratch. A
    checkpoint's newest intact step is used; damaged newer steps of the workdir are set aside."""
    config = setup.config
    src = mngr if mngr.all_steps() else None
    if src is None and config.resume:
        src = checkpoint.manager(f"{config.resume}/{checkpoint.CHECKPOINTS_DIR}", read_only=True)
        if not src.all_steps():
            raise ValueError(f"config.resume={config.resume} holds no checkpoint under "
                             f"{config.resume}/checkpoints.")
    if src is not None:
        target = checkpoint.abstract_with_shardings(setup.abstract_state, setup.shardings)
        directory = os.fspath(src.directory)
        try:
            step, state, skipped = checkpoint.newest_intact(
                directory, src.all_steps(),
                lambda s: checkpoint.restore(src, s, target, data_iter))
        finally:
            if src is not mngr:
                src.close()
        if skipped and src is mngr:
            checkpoint.set_aside(directory, skipped)
            mngr.reload()
        log.info("Resuming from %s step %d", directory, step)
        return state, f"{directory}/{step}"
    if config.init_from:
        log.info("Initialising parameters from %s (step 0)", config.init_from)
        return setup.state_from_pretrained(), f"init_from {config.init_from}"
    return setup.scratch_state(), "scratch"


def run_eval(setup, state, dataset, preview=16):
    """(arrays, summary, images) of the evaluation split; see `evaluate.run`."""
    config = setup.config
    phase = setup.eval_phase(int(state["step"]))
    arrays, images = evaluate.run(setup.eval_step(phase), setup.eval_params(state),
                                  dataset.eval_iterator(config.eval_batch_size), setup.mesh,
                                  preview)
    return arrays, setup.task.summarize(arrays, config.eval_thresholds, phase), images


def _eval_scalars(summary):
    out = {f"eval/{k}": v for k, v in summary.items() if isinstance(v, (int, float))}
    for row in summary.get("exit", []):
        out[f"eval/exit_fraction@{row['eta']:g}"] = row["exit_fraction"]
        out[f"eval/top1@{row['eta']:g}"] = row["top1"]
    return out


def _check_finite(step, values, last_good):
    loss = float(values["loss"])
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"Loss is {loss} at step {step}; stopping. The last good checkpoint is step "
            f"{last_good} in the workdir (lower config.lr, or use precision='float32').")


def train_and_evaluate(config, workdir, dataset=None):
    """Trains to the end of the schedule (or until SIGTERM); returns the final eval summary."""
    if dataset is None:
        dataset = Dataset(config.data)
    check_config(config)
    tasks.build(config.model, config.precision)  # a wrong model fails before the data is read
    setup = Setup(config, dataset.info)
    rundir.check_resumable(config, workdir)
    sched = setup.schedule
    train_iter = dataset.train_iterator(config.batch_size, seed=config.seed)
    mngr = checkpoint.manager(f"{workdir}/{checkpoint.CHECKPOINTS_DIR}",
                              keep=config.keep_checkpoints)
    best = checkpoint.manager(f"{workdir}/{checkpoint.BEST_DIR}", best=True)
    state, origin = initial_state(setup, mngr, train_iter)
    rundir.write_config(config, workdir)  # only once the start is known to work
    step = int(state["step"])
    last_good = mngr.latest_step()
    writer = metrics.Writer(workdir)
    progress = metrics.Progress(sched.total, config.batch_size, step)
    preempt = PreemptionFlag()
    _print0(f"{setup.task.describe(sched.selection_start)}: start at step {step}/{sched.total} "
            f"({origin}); {sched.steps_per_epoch} steps/epoch, {setup.mesh.devices.size} "
            f"devices, {jax.process_count()} processes")
    summary = None
    try:
        while step < sched.total:
            phase = setup.phase(step)
            batch = parallel.to_global(next(train_iter), parallel.batch_sharding(setup.mesh))
            first = not setup.has_step(phase)
            state, values = setup.train_step(phase)(state, batch)
            step += 1
            if first:
                jax.block_until_ready(values)
                progress.reset(step)
            if step % config.log_every_steps == 0 or step == sched.total:
                _check_finite(step, values, last_good)
                values = {k: float(v) for k, v in values.items()}
                speed = progress.measure(step)
                writer.write(step, {**{f"train/{k}": v for k, v in values.items()}, **speed})
                rate = (f" {speed['img_per_sec']:.1f} img/s ETA {speed['eta_min']:.1f} min"
                        if speed else "")
                _print0(f"step {step}/{sched.total} [{phase}] loss {values['loss']:.4f} "
                        f"lr {values['lr']:.2e}{rate}")
            stop = preempt.should_stop(step)
            if step % config.checkpoint_every_steps == 0 or step == sched.total or stop:
                _check_finite(step, values, last_good)
                checkpoint.save(mngr, step, state, train_iter, force=stop)
                last_good = step
            if stop:
                _print0(f"Preempted: saved step {step}; rerun the same command to resume.")
                return None
            if step % sched.eval_every == 0 or step == sched.total:
                arrays, summary, images = run_eval(setup, state, dataset)
                writer.write(step, _eval_scalars(summary))
                if step not in best.all_steps():  # else saved before a resume from earlier
                    checkpoint.save(best, step, {"params": setup.eval_params(state)},
                                    metrics={"top1": summary["top1"]})
                _print0(f"eval at step {step} [{setup.eval_phase(step)}]: "
                        + setup.task.format_summary(summary).splitlines()[0])
                progress.reset(step)
        if summary is None:  # resumed at the end: evaluate what was restored
            arrays, summary, images = run_eval(setup, state, dataset)
        reports.save_eval(setup.task, workdir, arrays, summary, images, config.data)
        _print0(setup.task.format_summary(summary))
        _print0(json.dumps({"step": step, **summary}))
        return summary
    finally:
        for manager in (mngr, best):
            manager.wait_until_finished()
        for resource in (mngr, best, writer, preempt):
            resource.close()


def _print0(msg):
    if jax.process_index() == 0:
        print(msg, flush=True)
