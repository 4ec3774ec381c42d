"""The two model kinds as tasks: a task wraps one model and owns its training phases, loss,
evaluation outputs, summary, FLOPs, prediction record and foreign-weight mapping.
"""
import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from lfvit_jax.core.errors import UsageError
from lfvit_jax.io.state_dict import deit_into_lfvit
from lfvit_jax.models import flops
from lfvit_jax.models.lfvit import LFViT
from lfvit_jax.models.vit import DeiT, resolve_width
from lfvit_jax.tasks import objective, sweep

log = logging.getLogger(__name__)


def _masked_mean(x, mask):
    return float(np.sum(x * mask) / max(np.sum(mask), 1))


def _probs(logits):
    return jax.nn.softmax(logits.astype(jnp.float32), -1)


class Task:
    """The common part: construction, config and the single-logits classifier's pieces."""
    name = None  # config.model.name
    model_class = None
    own_fields = ()  # config.model keys that only this kind reads
    grid = None  # geometry.Grid of its regions, for a kind that picks regions

    def __init__(self, model):
        self.model = model

    def model_config(self):
        """The model's constructor arguments as a JSON-ready `config.model` (its precision is the
        job's, not the model's)."""
        fields = {k: getattr(self.model, k) for k in self.model.__dataclass_fields__
                  if k not in ("parent", "name", "matmul_dtype")}
        return {"name": self.name, **{k: list(v) if isinstance(v, tuple) else v
                                      for k, v in fields.items()}}

    def init_params(self, rng):
        size = self.model.img_size
        return self.model.init({"params": rng}, jnp.zeros((1, size, size, 3)))["params"]

    def abstract_params(self):
        """The parameters' shapes and dtypes: `init_params` traced once per model, then kept
        (the trace of a DeiT-S-size LF-ViT takes about a second)."""
        # The matmul precision changes no shape: one trace serves both.
        return _abstract_params(type(self), self.model.clone(matmul_dtype="float32"))

    def _apply(self, params, images, train, rng, **kwargs):
        rngs = {"dropout": rng} if rng is not None else {}
        return self.model.apply({"params": params}, images, train=train, rngs=rngs, **kwargs)

    def adapt_state_dict(self, sd):
        """(state_dict, prefixes of Flax paths that may stay freshly initialised)."""
        return sd, ()

    def idle_params(self, phase):
        """Top-level parameters the phase's loss does not reach; the optimizer leaves them alone,
        as torch does a parameter whose gradient is None."""
        return ()

    def record(self, out, k):
        """Sample k's prediction: its class and confidence, from a predictor's host outputs."""
        logits = out["logits"][k].astype(np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        return {"class": int(probs.argmax()), "confidence": float(probs.max())}


class DeiTTask(Task):
    name, model_class = "deit", DeiT

    def phase(self, step, selection_start):
        return "full"

    def describe(self, selection_start):
        return "DeiT"

    def forward(self, params, images, *, train, phase="full", rng=None):
        return self._apply(params, images, train, rng)

    def loss(self, out, targets, loss="ce_kl"):
        ce = objective.soft_cross_entropy(out["logits"], targets)
        return ce, {"ce": ce}

    def eval_outputs(self, params, images, phase="full"):
        return {"probs": _probs(self.forward(params, images, train=False)["logits"])}

    def flops(self):
        return flops.deit_summary(self.model)

    def flops_report(self, focus_mode="region"):
        return flops.deit_report(self.model)

    def summarize(self, arrays, thresholds, phase="full"):
        mask = arrays["_mask"].astype(bool)
        return {"model": self.name, "examples": int(mask.sum()),
                "top1": _masked_mean(arrays["probs"].argmax(-1) == arrays["label"], mask),
                **self.flops()}

    def format_summary(self, summary):
        return f"top-1 {100 * summary['top1']:.2f}%  GFLOPs/image {summary['gflops']:.4f}"


class LFViTTask(Task):
    name, model_class = "lfvit", LFViT
    own_fields = ("region_size", "alpha", "beta", "gca_blocks", "region_method", "fusion",
                  "reuse_tokens", "whole_pos_embed")

    @property
    def grid(self):
        return self.model.grid

    def phase(self, step, selection_start):
        """The focus stage sees the whole fine image until selection starts, then its region."""
        return "whole" if step < selection_start else "region"

    def idle_params(self, phase):
        if phase == "whole" and not self.model.whole_pos_embed:
            return ("pos_embed_list_1",)  # the release trains it only once selection starts
        return ()

    def describe(self, selection_start):
        return f"LF-ViT (region selection from step {selection_start})"

    def forward(self, params, images, *, train, phase="region", rng=None):
        return self._apply(params, images, train, rng, focus=phase)

    def loss(self, out, targets, loss="ce_kl"):
        if loss not in objective.LOSSES:
            raise UsageError(f"config.loss={loss!r} is not one of {objective.LOSSES}.")
        ce = objective.soft_cross_entropy(out["focus_logits"], targets)
        if loss == "ce_kl":
            second = {"kl": objective.distill_kl(out["focus_logits"], out["loc_logits"])}
        else:
            second = {"loc_ce": objective.soft_cross_entropy(out["loc_logits"], targets)}
        return ce + sum(second.values()), {"ce": ce, **second}

    def eval_outputs(self, params, images, phase="region"):
        """Per-example outputs with the focus stage of `phase` (the release evaluates on the
        whole image until selection starts)."""
        out = self.forward(params, images, train=False, phase=phase)
        return {"loc_probs": _probs(out["loc_logits"]), "focus_probs": _probs(out["focus_logits"]),
                "region": out["region"], "coarse_index": out["coarse_index"]}

    def flops(self, phase="region"):
        return dict(flops.lfvit_summary(self.model, phase),
                    deit_gflops=flops.deit_gflops(self.model))

    def flops_report(self, focus_mode="region"):
        return flops.lfvit_report(self.model, focus_mode)

    def summarize(self, arrays, thresholds, phase="region"):
        """Both stages' top-1, the threshold sweep ("exit") and, given boxes, region hits; FLOPs
        of the focus stage of `phase`, the one `eval_outputs` ran."""
        mask, labels = arrays["_mask"].astype(bool), arrays["label"]
        g = self.flops(phase)
        out = {"model": self.name, "examples": int(mask.sum()),
               "loc_top1": _masked_mean(arrays["loc_probs"].argmax(-1) == labels, mask),
               "focus_top1": _masked_mean(arrays["focus_probs"].argmax(-1) == labels, mask)}
        out.update(top1=out["focus_top1"], stage1_gflops=g["stage1_gflops"],
                   stage12_gflops=g["stage12_gflops"], deit_gflops=g["deit_gflops"])
        out["exit"] = sweep.threshold_sweep(arrays["loc_probs"], arrays["focus_probs"], labels,
                                            mask, g, g["deit_gflops"], thresholds)
        if "bbox" in arrays:
            for key, hits in (("region_hit", self.grid.centre_hits),
                              ("region_contains", self.grid.contains)):
                out[key] = _masked_mean(hits(arrays["region"], arrays["bbox"]), mask)
        return out

    def format_summary(self, summary):
        head = (f"localization top-1 {100 * summary['loc_top1']:.2f}%   focus top-1 "
                f"{100 * summary['focus_top1']:.2f}%")
        if "region_hit" in summary:
            head += (f"   region hit {100 * summary['region_hit']:.2f}% (contains the box "
                     f"{100 * summary['region_contains']:.2f}%)")
        head += f"   (DeiT of this backbone: {summary['deit_gflops']:.4f} GFLOPs)"
        return head + "\n" + sweep.format_table(summary["exit"])

    def record(self, out, k):
        """Which stage decided, what localization said, and where the region lies."""
        row = super().record(out, k)
        row.update(stage=1 if out["exited"][k] else 2,
                   loc_class=int(out["loc_logits"][k].argmax()),
                   loc_confidence=float(out["confidence"][k]),
                   region_box=self.grid.region_boxes(out["region"][k]).tolist(),
                   kept_tokens=out["coarse_index"][k].tolist())
        return row

    def adapt_state_dict(self, sd):
        """A timm DeiT state_dict gets LF-ViT's two position embeddings (its reuse block stays
        fresh); without fusion, the checkpoint's reuse block is dropped."""
        fresh = ()
        if "pos_embed" in sd:
            sd, fresh = deit_into_lfvit(sd, self.model.h1), ("reuse_block_",)
        if not self.model.fusion and any(k.startswith("reuse_block.") for k in sd):
            log.warning("fusion=False: the checkpoint's reuse block is not used.")
            sd = {k: v for k, v in sd.items() if not k.startswith("reuse_block.")}
        return sd, fresh


TASKS = {task.name: task for task in (LFViTTask, DeiTTask)}


def build(model_cfg, precision="float32"):
    """The task of a dict-like `config.model` (see configs/lfvit_deit_s.py), with its model, whose
    matmuls take `precision` operands (config.precision)."""
    cfg = dict(model_cfg)
    name = cfg.pop("name", "lfvit")
    if name not in TASKS:
        raise UsageError(f"Unknown model name {name!r}; choose one of {sorted(TASKS)}.")
    task = TASKS[name]
    width, depth, heads, mlp = resolve_width(
        cfg.pop("variant", None), cfg.pop("width", None), cfg.pop("depth", None),
        cfg.pop("num_heads", None), cfg.pop("mlp_dim", None))
    kwargs = dict(width=width, depth=depth, num_heads=heads, mlp_dim=mlp, matmul_dtype=precision)
    others = {f for t in TASKS.values() for f in t.own_fields} - set(task.own_fields)
    for key, value in cfg.items():
        if key in others:
            continue  # e.g. a DeiT baseline config that keeps LF-ViT's fields: they do not apply
        if (key not in task.model_class.__dataclass_fields__
                or key in ("parent", "name", "matmul_dtype")):
            raise UsageError(f"Unknown model config key {key!r} for {name}.")
        kwargs[key] = tuple(value) if isinstance(value, list) else value  # lists from JSON
    return task(task.model_class(**kwargs))


@functools.lru_cache(maxsize=8)
def _abstract_params(task_class, model):
    return jax.eval_shape(lambda: task_class(model).init_params(jax.random.key(0)))


def for_model(model):
    """The task of a model built elsewhere."""
    for task in TASKS.values():
        if type(model) is task.model_class:
            return task(model)
    raise ValueError(f"No task for model {type(model).__name__}; use LFViT or DeiT.")
