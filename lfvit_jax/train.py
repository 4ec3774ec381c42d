"""The training loop: jit over a 1-D device mesh, orbax checkpoints, exact resume.

`train_and_evaluate(config, workdir)` trains LF-ViT (or the DeiT baseline) with the objective and
schedule of the algorithm doc (section 10) and returns the final evaluation summary;
`evaluate_checkpoint(config, workdir)` only evaluates. Both take the data package as an argument
(default `lfvit_jax.data`) so tests can feed a synthetic dataset through the same interface.
"""
import functools
import json
import logging
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from lfvit_jax import checkpoint, evaluate, metrics, optim, parallel
from lfvit_jax.models import build_model
from lfvit_jax.objective import forward, is_lfvit, loss_terms

log = logging.getLogger(__name__)

# Every top-level config key the loop reads; anything else is a typo and an error.
CONFIG_KEYS = frozenset({
    "model", "data", "batch_size", "eval_batch_size", "total_epochs", "total_steps",
    "warmup_epochs",
    "selection_start_epoch", "lr", "warmup_lr", "min_lr", "wd", "adam_eps", "loss", "grad_accum",
    "compute_dtype", "ema_decay", "param_sharding", "seed", "log_every_steps",
    "eval_every_epochs", "checkpoint_every_steps", "keep_checkpoints", "eval_thresholds",
    "resume", "init_from"})
# Config sections that must agree between a workdir's checkpoint and the current run.
RESUME_MUST_MATCH = ("model", "param_sharding", "ema_decay", "grad_accum")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class NonFiniteLossError(FloatingPointError):
    pass


def check_config(config):
    unknown = sorted(set(config.keys()) - CONFIG_KEYS)
    if unknown:
        raise ValueError(f"Unknown config keys {unknown}; the training loop reads "
                         f"{sorted(CONFIG_KEYS)}. Fix the spelling in the config file.")
    if config.compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"config.compute_dtype={config.compute_dtype!r} is not one of "
                         f"{sorted(COMPUTE_DTYPES)}.")
    if config.grad_accum < 1:
        raise ValueError(f"config.grad_accum={config.grad_accum} must be >= 1.")


class Schedule:
    """Epoch-based settings turned into step counts for this dataset and batch size.

    With `config.total_steps` set, the run has that many steps and every epoch-based setting keeps
    its fraction of `total_epochs` (so selection starts at 231/300 of any run by default).
    """

    def __init__(self, config, train_examples):
        self.steps_per_epoch = train_examples / config.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"config.batch_size={config.batch_size} exceeds the "
                             f"{train_examples} training examples.")
        self.steps_per_epoch = int(self.steps_per_epoch)
        per_epoch = self.steps_per_epoch
        if config.total_steps:
            per_epoch = config.total_steps / config.total_epochs
        to_steps = lambda epochs: int(round(epochs * per_epoch))
        self.total = max(to_steps(config.total_epochs), 1)
        self.warmup = to_steps(config.warmup_epochs)
        self.selection_start = to_steps(config.selection_start_epoch)
        self.eval_every = max(to_steps(config.eval_every_epochs), 1)

    def phase(self, step):
        """LF-ViT's focus stage sees the whole fine image until selection starts."""
        return "whole" if step < self.selection_start else "region"


def _cast(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                        tree)


def make_train_step(model, tx, lr_fn, config, mesh, state_shardings, phase):
    """A jitted, state-donating update on one global batch (split into `grad_accum` parts)."""
    accum, dtype = config.grad_accum, COMPUTE_DTYPES[config.compute_dtype]
    base_key = jax.random.key(config.seed)
    batch_spec = parallel.batch_sharding(mesh)

    def loss_fn(params, images, targets, rng):
        out = forward(model, _cast(params, dtype), images.astype(dtype), train=True,
                      focus=phase, rng=rng)
        return loss_terms(model, out, targets, config.loss)

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
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
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
    """Everything a run needs besides the data stream: mesh, model, optimizer, shardings."""

    def __init__(self, config, data, mesh=None):
        check_config(config)
        self.config = config
        self.info = data.get_dataset_info(config.data)
        model_cfg = config.model
        for key, value in (("num_classes", self.info["num_classes"]),
                           ("img_size", self.info["image_size"])):
            if model_cfg[key] != value:
                raise ValueError(f"config.model.{key}={model_cfg[key]} but the dataset has "
                                 f"{key}={value}; make them agree.")
        self.mesh = mesh or parallel.make_mesh()
        parallel.check_batch(config.batch_size, self.mesh, config.grad_accum)
        parallel.check_batch(config.eval_batch_size, self.mesh)
        self.model = build_model(model_cfg)
        self.schedule = Schedule(config, self.info["train_examples"])
        self.lr_fn = optim.schedule(config, self.schedule.total, self.schedule.warmup)
        self.tx = optim.optimizer(config, self.schedule.total, self.schedule.warmup)
        size = model_cfg.img_size
        self._dummy = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
        self.abstract_state = jax.eval_shape(self._init_state, jax.random.key(0))
        self.shardings = parallel.state_shardings(self.abstract_state, self.mesh,
                                                  config.param_sharding)
        self._steps = {}

    def _init_params(self, rng):
        return self.model.init({"params": rng}, jnp.zeros(self._dummy.shape))["params"]

    def _state_from_params(self, params):
        state = {"step": jnp.zeros((), jnp.int32), "params": params,
                 "opt_state": self.tx.init(params)}
        if self.config.ema_decay:
            state["ema"] = params
        return state

    def _init_state(self, rng):
        return self._state_from_params(self._init_params(rng))

    def scratch_state(self):
        rng = jax.random.fold_in(jax.random.key(self.config.seed), 1 << 20)
        return jax.jit(self._init_state, out_shardings=self.shardings)(rng)

    def state_from_pretrained(self, path):
        """Params-only start from a converted / official / timm checkpoint; step 0."""
        from lfvit_jax.pretrained import load_pretrained
        overrides = {k: v for k, v in dict(self.config.model).items() if k != "variant"}
        _, variables = load_pretrained(path, **overrides)
        flat_want = traverse_util.flatten_dict(self.abstract_state["params"], sep="/")
        flat_got = traverse_util.flatten_dict(variables["params"], sep="/")
        if set(flat_want) != set(flat_got):
            raise ValueError(f"config.init_from={path} gives parameters {sorted(flat_got)[:5]}... "
                             f"but the model needs {sorted(flat_want)[:5]}...")
        params = parallel.put_global(jax.tree.map(np.asarray, variables["params"]),
                                     self.shardings["params"])
        return jax.jit(self._state_from_params, out_shardings=self.shardings)(params)

    def phase(self, step):
        """LF-ViT's focus stage sees the whole fine image until selection starts; DeiT has one
        phase, 'full'."""
        return self.schedule.phase(step) if is_lfvit(self.model) else "full"

    def has_step(self, phase):
        return phase in self._steps

    def train_step(self, phase):
        """The jitted step of a phase ('whole', 'region' or, for DeiT, 'full'), built once."""
        if phase not in self._steps:
            self._steps[phase] = make_train_step(self.model, self.tx, self.lr_fn, self.config,
                                                 self.mesh, self.shardings, phase)
        return self._steps[phase]

    @functools.cached_property
    def eval_step(self):
        return evaluate.make_eval_step(self.model, self.shardings["params"], self.mesh)

    def eval_params(self, state):
        return state["ema"] if "ema" in state else state["params"]


def _write_config(config, workdir):
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        new = json.loads(config.to_json())
        diffs = [k for k in RESUME_MUST_MATCH if old.get(k) != new.get(k)]
        if diffs:
            raise ValueError(
                f"{workdir} holds a run with a different {diffs} (see {path}); its checkpoint "
                "cannot continue with this config. Use a fresh --workdir or the original config.")
    if jax.process_index() == 0:
        with open(path, "w") as f:
            f.write(config.to_json(indent=1))


def _resume_source(config, mngr):
    """(manager, step) to restore from, in the order workdir > config.resume; None if neither."""
    if mngr.latest_step() is not None:
        return mngr, mngr.latest_step()
    if config.resume:
        other = checkpoint.manager(os.path.join(config.resume, "checkpoints"), keep=None,
                                   read_only=True)
        if other.latest_step() is None:
            raise ValueError(f"config.resume={config.resume} holds no checkpoint under "
                             f"{config.resume}/checkpoints.")
        return other, other.latest_step()
    return None


def initial_state(setup, mngr, data_iter, allow_scratch=True):
    """The resume order: workdir checkpoint > config.resume > config.init_from > scratch."""
    config = setup.config
    source = _resume_source(config, mngr)
    if source is not None:
        src, step = source
        target = checkpoint.abstract_with_shardings(setup.abstract_state, setup.shardings)
        log.info("Resuming from %s step %d", src.directory, step)
        try:
            return checkpoint.restore(src, step, target, data_iter), f"{src.directory}/{step}"
        finally:
            if src is not mngr:
                src.close()
    if config.init_from:
        log.info("Initialising parameters from %s (step 0)", config.init_from)
        return setup.state_from_pretrained(config.init_from), f"init_from {config.init_from}"
    if not allow_scratch:
        raise ValueError(f"No weights to use: no checkpoint in {mngr.directory} and no "
                         "config.resume or config.init_from.")
    return setup.scratch_state(), "scratch"


def run_eval(setup, state, data, preview=16):
    """(arrays, summary, images): the evaluation split's arrays and summary, and this process's
    first `preview` images (for the overlays figure; all of them, padding included, in the
    arrays' order, with preview=None)."""
    config = setup.config
    kept = []

    def keep_images(batches):
        for batch in batches:
            if preview is None or sum(map(len, kept)) < preview:
                kept.append(batch["image"])
            yield batch

    batches = keep_images(data.eval_iterator(config.data, config.eval_batch_size))
    arrays = evaluate.predict(setup.eval_step, setup.eval_params(state), batches, setup.mesh,
                              data.to_global)
    images = np.concatenate(kept)[:preview] if kept else None
    return arrays, evaluate.summarize(setup.model, arrays, config.eval_thresholds), images


def save_eval_outputs(setup, workdir, arrays, summary, images):
    """Process 0: eval_arrays.npz, eval_result.json and the figures (budget curve, stage counts,
    and for a single process, where its first images are the arrays' first rows, overlays)."""
    if jax.process_index() != 0:
        return
    evaluate.save_result(workdir, arrays, summary)
    if is_lfvit(setup.model) and jax.process_count() == 1:
        fig = evaluate.overlays_figure(setup.model, arrays, images, setup.config.data)
        fig.savefig(os.path.join(workdir, evaluate.OVERLAYS_FILE))


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
            f"{last_good} in the workdir (lower config.lr, or use compute_dtype='float32').")


def _default_data():
    from lfvit_jax import data
    return data


def train_and_evaluate(config, workdir, data=None):
    """Trains to the end of the schedule (or until SIGTERM) and returns the final eval summary."""
    data = data or _default_data()
    setup = Setup(config, data)
    os.makedirs(workdir, exist_ok=True)
    _write_config(config, workdir)
    sched = setup.schedule
    train_iter = data.train_iterator(config.data, config.batch_size, seed=config.seed)
    mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
    best = checkpoint.manager(os.path.join(workdir, "best"), keep=1, best=True)
    state, origin = initial_state(setup, mngr, train_iter)
    step = int(state["step"])
    last_good = mngr.latest_step()
    writer = metrics.Writer(workdir)
    progress = metrics.Progress(sched.total, config.batch_size, step)
    preempt = checkpoint.PreemptionFlag()
    what = (f"LF-ViT (region selection from step {sched.selection_start})"
            if is_lfvit(setup.model) else "DeiT")
    _print0(f"{what}: start at step {step}/{sched.total} ({origin}); {sched.steps_per_epoch} "
            f"steps/epoch, {setup.mesh.devices.size} devices, {jax.process_count()} processes")
    summary = None
    try:
        while step < sched.total:
            phase = setup.phase(step)
            batch = data.to_global(next(train_iter), parallel.batch_sharding(setup.mesh))
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
                arrays, summary, images = run_eval(setup, state, data)
                writer.write(step, _eval_scalars(summary))
                checkpoint.save(best, step, {"params": setup.eval_params(state)},
                                metrics={"top1": summary["top1"]})
                _print0(f"eval at step {step}: " + evaluate.format_table(summary).splitlines()[0])
                progress.reset(step)
        if summary is None:  # resumed at the end: evaluate what was restored
            arrays, summary, images = run_eval(setup, state, data)
        save_eval_outputs(setup, workdir, arrays, summary, images)
        _print0(evaluate.format_table(summary))
        _print0(json.dumps({"step": step, **summary}))
        return summary
    finally:
        mngr.wait_until_finished()
        best.wait_until_finished()
        mngr.close()
        best.close()
        writer.close()
        preempt.close()


def restore_for_inference(config, workdir, data=None):
    """(setup, state, origin) of the workdir's latest checkpoint, else config.resume / init_from."""
    setup = Setup(config, data or _default_data())
    mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
    try:
        state, origin = initial_state(setup, mngr, None, allow_scratch=False)
    finally:
        mngr.close()
    return setup, state, origin


def evaluate_checkpoint(config, workdir, data=None):
    """Evaluates the workdir's latest checkpoint (or config.resume / init_from); prints the table."""
    data = data or _default_data()
    setup, state, origin = restore_for_inference(config, workdir, data)
    arrays, summary, images = run_eval(setup, state, data)
    os.makedirs(workdir, exist_ok=True)
    save_eval_outputs(setup, workdir, arrays, summary, images)
    _print0(f"Evaluated {origin}")
    _print0(evaluate.format_table(summary))
    _print0(json.dumps({"step": int(state["step"]), **summary}))
    return summary


def _print0(msg):
    if jax.process_index() == 0:
        print(msg, flush=True)
