"""LF-ViT: localization on a half-resolution copy, then focus on the class-discriminative region.

Follows the official release (see docs in shared/docs/lfvit-algorithm.md of the project):
one set of weights for both stages, a positional embedding per resolution, GCA over blocks
`gca_blocks`, NGCA window choice, top-K coarse tokens refined into their 4 fine children, the
localization features fused into the fine embeddings (reuse block + nearest upsample), and the
unkept coarse tokens reused from the localization stage's layer-0 input.
"""
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from flax import struct

from lfvit_jax.core.errors import UsageError
from lfvit_jax.models import geometry, selection
from lfvit_jax.models.resize import resize_align_corners
from lfvit_jax.models.vit import Mlp, VitTrunk, check_images, layer_norm, trunc_normal

FOCUS_MODES = ("region", "whole")


def check_threshold(threshold):
    if isinstance(threshold, (int, float)) and not 0.0 <= threshold <= 1.0:
        raise UsageError(f"Exit threshold eta={threshold} is outside [0, 1]; it is compared with "
                         "the localization stage's top softmax probability.")


@struct.dataclass
class Localization:
    """What the localization stage hands on: its outputs and what `focus` needs from it. A
    pytree, so it passes whole through jit, slicing and the early-exit queue."""
    loc_logits: jax.Array  # (B, classes)
    gca: jax.Array  # (B, h1^2) global class attention, raster order
    region: jax.Array  # (B,) chosen window
    coarse_index: jax.Array  # (B, K) refined coarse tokens, descending GCA
    fine_index: jax.Array  # (B, 4K) their fine children
    rest_index: jax.Array  # (B, h1^2 - K) the coarse tokens not refined, in the release's order
    tokens: jax.Array  # (B, 1 + h1^2, C) stage 1's layer-0 input: the reused coarse tokens
    last_input: jax.Array  # (B, 1 + h1^2, C) stage 1's last-block input, for deferred fusion
    features: Optional[jax.Array] = None  # (B, 1 + h1^2, C) final features; None when deferred

    def outputs(self):
        """The public part, as `LFViT.__call__` returns it."""
        return {"loc_logits": self.loc_logits, "gca": self.gca, "region": self.region,
                "coarse_index": self.coarse_index, "fine_index": self.fine_index}


class LFViT(VitTrunk):
    """LF-ViT on full-resolution (B, S, S, 3) images, S a multiple of 2 * patch.

    `apply(variables, images)` returns a dict: loc_logits, focus_logits (B, classes), gca (B, h1^2),
    region (B,), coarse_index (B, K), fine_index (B, 4K); with `threshold=eta` also exited (B,),
    confidence (B,) and logits (B, classes), the per-sample final prediction.
    """
    img_size: int = 224
    region_size: int = 5
    alpha: float = 0.88
    beta: float = 0.99
    gca_blocks: Optional[Tuple[int, ...]] = None  # default: the last three quarters (3..11 of 12)
    region_method: str = "ngca"
    fusion: bool = True  # reuse block + upsample of localization features into fine embeddings
    reuse_tokens: bool = True  # unkept coarse tokens join the focus sequence
    # Our change, off by default: add pos_embed_list_1 to the whole-image focus sequence too. The
    # release adds none there (it trains pos_embed_list_1 only once selection starts).
    whole_pos_embed: bool = False

    # Derived sizes: Python ints, so every shape is static under jit.
    @property
    def h1(self):
        return self.img_size // (2 * self.patch)

    @property
    def grid(self):
        return geometry.Grid(self.h1, self.region_size, self.patch)

    @property
    def num_kept(self):
        return selection.num_kept(self.region_size, self.alpha)

    @property
    def target_blocks(self):
        if self.gca_blocks is None:
            return tuple(range(self.depth // 4, self.depth))
        return tuple(self.gca_blocks)

    def __post_init__(self):
        self._validate()  # at construction: a wrong config fails before any data is read
        super().__post_init__()

    def setup(self):
        super().setup()
        h1, h2 = self.h1, 2 * self.h1
        self.pos_embed_list_0 = self.param("pos_embed_list_0", trunc_normal, (1, 1 + h1 * h1, self.width))
        self.pos_embed_list_1 = self.param("pos_embed_list_1", trunc_normal, (1, 1 + h2 * h2, self.width))
        self.reuse_block_0 = layer_norm()
        self.reuse_block_1 = Mlp(4 * self.width, self.dense_init, self.matmul_dtype)

    def _validate(self):
        step = 2 * self.patch
        if self.img_size % step or self.img_size < step:
            raise UsageError(f"img_size {self.img_size} must be a positive multiple of {step} "
                             f"(twice the patch size {self.patch}), e.g. 224 or 288.")
        if not 1 <= self.region_size <= self.h1:
            raise UsageError(f"region_size m={self.region_size} must be in [1, {self.h1}]: the coarse "
                             f"grid of a {self.img_size}px image is {self.h1}x{self.h1}.")
        if not 0.0 < self.alpha <= 1.0:
            raise UsageError(f"alpha={self.alpha} must be in (0, 1]: it is the fraction of the "
                             "region's tokens that are refined.")
        if not 0.0 <= self.beta < 1.0:
            raise UsageError(f"beta={self.beta} must be in [0, 1): it is the GCA moving-average decay.")
        if not self.target_blocks or not all(0 <= b < self.depth for b in self.target_blocks):
            raise UsageError(f"gca_blocks {self.target_blocks} must be non-empty block indices "
                             f"in [0, {self.depth}).")
        if self.region_method not in selection.REGION_METHODS:
            raise UsageError(f"region_method {self.region_method!r} is not one of "
                             f"{selection.REGION_METHODS}.")

    def __call__(self, images, threshold=None, train=False, focus="region"):
        check_threshold(threshold)
        loc = self.localize(images, train)
        out = dict(loc.outputs(), focus_logits=self.focus(images, loc, train, focus))
        if threshold is not None:
            out.update(early_exit(out["loc_logits"], out["focus_logits"], threshold))
        return out

    def localize(self, images, train=False, defer=False):
        """Stage 1 and region selection; returns a `Localization`.

        With `defer`, the last block runs for the class token only (the exit decision and GCA
        need nothing else) and `focus` later finishes it for just the K region tokens it fuses:
        the same outputs, with the work skipped for every sample that exits. Region focus only.
        """
        check_images(images, self.img_size, 2 * self.patch)
        x = resize_align_corners(images, self.img_size // 2)
        tokens = self.with_cls(self.patch_embed(x), self.pos_embed_list_0)
        features, attn, last_input = self.encode(tokens, train, self.target_blocks,
                                                 cls_only=defer)
        gca = selection.gca_from_attention(attn, self.beta)
        rng = None
        if self.region_method == "random":  # without a 'region' rng, a fixed key keeps eval repeatable
            rng = self.make_rng("region") if self.has_rng("region") else jax.random.key(0)
        region = selection.choose_region(gca, self.grid, self.region_method, rng)
        sel = selection.select_tokens(jax.lax.stop_gradient(gca), region, self.grid,
                                      self.num_kept)
        return Localization(loc_logits=self.head(features[:, 0]), gca=gca, region=region,
                            coarse_index=sel["kept"], fine_index=sel["fine"],
                            rest_index=sel["rest"], tokens=tokens, last_input=last_input,
                            features=None if defer else features)

    def focus(self, images, loc, train=False, mode="region"):
        """Stage 2 on the full-resolution images, given the `Localization` of these images."""
        if mode not in FOCUS_MODES:
            raise ValueError(f"focus mode {mode!r} is not one of {FOCUS_MODES}.")
        b, h1 = images.shape[0], self.h1
        cls = jnp.broadcast_to(self.cls_token, (b, 1, self.width))
        pos_cls, pos = self.pos_embed_list_1[:, :1], self.pos_embed_list_1[0, 1:]
        if mode == "whole":
            if loc.features is None:
                raise ValueError("focus mode 'whole' needs every localization feature: call "
                                 "localize without defer.")
            fine = self.patch_embed(images)
            if self.fusion:
                fine = fine + upsample2x(self._reuse(loc.features[:, 1:]), h1)
            # The release adds no position embedding in this phase (nor to the cls token).
            parts = [cls + pos_cls, fine + pos] if self.whole_pos_embed else [cls, fine]
        else:
            # Only the 4K selected fine tokens are embedded, and only their K parents go through
            # the reuse block: the same values as embedding everything and gathering after.
            index = loc.fine_index
            fine = self.patch_embed(images, index)
            if self.fusion:
                if loc.features is not None:
                    kept = take_tokens(loc.features[:, 1:], loc.coarse_index)
                else:  # deferred: finish stage 1's last block for these K tokens only
                    kept = self.finish_tokens(loc.last_input, 1 + loc.coarse_index, train)
                fine = fine + jnp.tile(self._reuse(kept), (1, 4, 1))  # quarters follow `kept`
            parts = [cls + pos_cls, fine + pos[index]]
            if self.reuse_tokens:
                parts.append(take_tokens(loc.tokens[:, 1:], loc.rest_index))
        tokens = jnp.concatenate(parts, axis=1)
        self.sow("intermediates", "focus_tokens", tokens)  # the stage-2 layer-0 input, for tests
        features, _, _ = self.encode(tokens, train, cls_only=True)
        return self.head(features[:, 0])

    def _reuse(self, features):
        return self.reuse_block_1(self.reuse_block_0(features))


def take_tokens(tokens, index):
    """tokens (B, N, C), index (B, k) -> (B, k, C)."""
    return jnp.take_along_axis(tokens, index[:, :, None], axis=1)


def upsample2x(tokens, h1):
    """Nearest x2 upsampling of a raster token grid: (B, h1^2, C) -> (B, 4 h1^2, C)."""
    b, _, c = tokens.shape
    grid = tokens.reshape(b, h1, 1, h1, 1, c)
    return jnp.broadcast_to(grid, (b, h1, 2, h1, 2, c)).reshape(b, 4 * h1 * h1, c)


def exit_decision(loc_logits, threshold):
    """(confidence, exited): exit after localization when its top softmax probability >= eta."""
    confidence = jax.nn.softmax(loc_logits.astype(jnp.float32), axis=-1).max(axis=-1)
    return confidence, confidence >= threshold


def early_exit(loc_logits, focus_logits, threshold):
    confidence, exited = exit_decision(loc_logits, threshold)
    return {"confidence": confidence, "exited": exited,
            "logits": jnp.where(exited[:, None], loc_logits, focus_logits)}
