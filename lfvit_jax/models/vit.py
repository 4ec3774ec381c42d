"""DeiT building blocks in Flax linen, with parameter names that mirror timm.

timm's `blocks.3.attn.qkv.weight` is `blocks_3/attn/qkv/kernel` here (Flax names list members
`name_i`), so a PyTorch state_dict converts by rule (see `lfvit_jax.pretrained`).
"""
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lfvit_jax.core.errors import UsageError
from lfvit_jax.models import precision

# width, depth, heads of the DeiT family (the one place they are written); the MLP is 4x the width.
VARIANTS = {
    "Ti": (192, 12, 3),
    "S": (384, 12, 6),
    "B": (768, 12, 12),
}
_S_WIDTH, _S_DEPTH, _S_HEADS = VARIANTS["S"]


def traced_once(init):
    """`init` traced once per shape and dtype: Flax traces every parameter's initializer again
    at each apply to check its shape, and a jitted initializer's trace is cached (a trace of the
    DeiT-S-size LF-ViT: 0.52 s -> 0.43 s). The values are the same."""
    jitted = jax.jit(init, static_argnums=(1, 2))
    return lambda key, shape, dtype=jnp.float32: jitted(key, tuple(shape), dtype)


# timm initialises Linear weights, position embeddings and the cls token with trunc_normal(.02).
trunc_normal = traced_once(nn.initializers.truncated_normal(0.02))
lecun_normal = traced_once(nn.initializers.lecun_normal())

# Dense kernel initialisers by name (`dense_init`). 'deit' is timm's trunc_normal(.02), the
# release's; it suits widths of 192-768, but at width 64 it is 6x below 1/sqrt(fan_in), the
# blocks start as near-identities and small models sit on a long loss plateau. 'lecun' draws
# with variance 1/fan_in.
DENSE_INITS = {"deit": trunc_normal, "lecun": lecun_normal}


def layer_norm(name=None):
    # Two-pass variance like PyTorch: Flax's fast E[x^2]-E[x]^2 form loses digits at large means.
    return nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, name=name)


def gelu(x, matmul_dtype="float32"):
    """DeiT's exact (erf) GELU, in float32. Under the bfloat16 policy its erf is `precision.erf`,
    which XLA:CPU vectorizes (its own erf made this GELU a fifth of a short-sequence block)."""
    if matmul_dtype == "float32":
        return nn.gelu(x, approximate=False)
    return 0.5 * x * (1.0 + precision.erf(x * jnp.float32(2 ** -0.5)))


class Dense(nn.Module):
    """nn.Dense (same parameters, same float32 result), its matmul under the precision policy."""
    features: int
    dense_init: str = "deit"
    matmul_dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", DENSE_INITS[self.dense_init], (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return precision.dense(x, kernel, bias, self.matmul_dtype)


def dense(features, init="deit", name=None, matmul_dtype="float32"):
    return Dense(features, init, matmul_dtype, name=name)


class Patchify(nn.Module):
    """A stride-p, p x p convolution written as reshape + matmul.

    Same parameters as `nn.Conv` (kernel in HWIO layout) and the same result, but about 25% faster
    to train on CPU than XLA's convolution. With `index` (B, k), only those raster patches are
    embedded: the focus stage needs 4K of the h2^2.
    """
    features: int
    patch: int
    matmul_dtype: str = "float32"

    @nn.compact
    def __call__(self, x, index=None):
        b, h, w, c = x.shape
        p = self.patch
        kernel = self.param("kernel", lecun_normal, (p, p, c, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, (h // p) * (w // p), p * p * c)
        if index is not None:
            x = jnp.take_along_axis(x, index[:, :, None], axis=1)
        return precision.dense(x, kernel.reshape(p * p * c, self.features), bias,
                               self.matmul_dtype)


class PatchEmbed(nn.Module):
    """Image (B, H, W, 3) -> raster-ordered patch tokens (B, H/p * W/p, C), or those at `index`."""
    features: int
    patch: int
    matmul_dtype: str = "float32"

    @nn.compact
    def __call__(self, x, index=None):
        return Patchify(self.features, self.patch, self.matmul_dtype, name="proj")(x, index)


class HeadsQKV(nn.Module):
    """timm's qkv Linear (kernel (C, 3C), output features laid out (3, heads, head_dim)), returned
    as (3, B, heads, N, head_dim): one einsum straight into that layout, or the plain
    (B N, C) @ (C, 3C) product and a transpose, whichever `precision.heads_einsum` says is faster
    for this precision and CPU."""
    num_heads: int
    dense_init: str = "deit"
    matmul_dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        h, d = self.num_heads, c // self.num_heads
        kernel = self.param("kernel", DENSE_INITS[self.dense_init], (c, 3 * c))
        bias = self.param("bias", nn.initializers.zeros, (3 * c,))
        if precision.heads_einsum(self.matmul_dtype):
            return (jnp.einsum("bnc,cthd->tbhnd", x, kernel.reshape(c, 3, h, d))
                    + bias.reshape(3, 1, h, 1, d))
        qkv = precision.dense(x, kernel, bias, self.matmul_dtype)
        return qkv.reshape(x.shape[:2] + (3, h, d)).transpose(2, 0, 3, 1, 4)


class HeadsProj(nn.Module):
    """timm's output Linear (kernel (C, C)) applied to per-head outputs (B, heads, N, head_dim):
    one einsum, or the heads merged first and then a plain matmul (as in HeadsQKV)."""
    dense_init: str = "deit"
    matmul_dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        _, h, _, d = x.shape
        c = h * d
        kernel = self.param("kernel", DENSE_INITS[self.dense_init], (c, c))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        if precision.heads_einsum(self.matmul_dtype):
            return jnp.einsum("bhnd,hdc->bnc", x, kernel.reshape(h, d, c)) + bias
        merged = x.transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[2], c)
        return precision.dense(merged, kernel, bias, self.matmul_dtype)


class Attention(nn.Module):
    """Multi-head self-attention; optionally also returns the post-softmax probabilities."""
    num_heads: int
    dense_init: str = "deit"
    matmul_dtype: str = "float32"

    @nn.compact
    def __call__(self, x, return_probs=False, cls_only=False, query_index=None):
        """With `cls_only`, only the class token queries: output (B, 1, C), probs (B, h, 1, N).
        With `query_index` (B, k), only those tokens query: output (B, k, C)."""
        d = x.shape[-1] // self.num_heads
        mm = self.matmul_dtype
        q, k, v = HeadsQKV(self.num_heads, self.dense_init, mm, name="qkv")(x)
        if cls_only:
            q = q[:, :, :1]
        elif query_index is not None:
            q = jnp.take_along_axis(q, query_index[:, None, :, None], axis=2)
        logits = precision.einsum("bhqd,bhkd->bhqk", q * d**-0.5, k, mm)
        probs = jax.nn.softmax(logits, axis=-1)
        out = HeadsProj(self.dense_init, mm, name="proj")(
            precision.einsum("bhqk,bhkd->bhqd", probs, v, mm))
        return (out, probs) if return_probs else out


class Mlp(nn.Module):
    hidden: int
    dense_init: str = "deit"
    matmul_dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        y = gelu(dense(self.hidden, self.dense_init, "fc1", self.matmul_dtype)(x),
                 self.matmul_dtype)
        return dense(x.shape[-1], self.dense_init, "fc2", self.matmul_dtype)(y)


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample (timm's DropPath)."""
    rate: float

    @nn.compact
    def __call__(self, x, deterministic):
        if deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(mask, x / keep, 0.0)


class Block(nn.Module):
    """Pre-norm transformer block. Returns the class token's attention row (B, heads, N) too."""
    num_heads: int
    mlp_dim: int
    drop_path: float = 0.0
    dense_init: str = "deit"
    matmul_dtype: str = "float32"

    @nn.compact
    def __call__(self, x, deterministic=True, cls_only=False, query_index=None):
        """With `cls_only`, returns the class token's output only, (B, 1, C): the same values as
        the full block's first row, without the other tokens' queries, projection and MLP. With
        `query_index` (B, k), the outputs of those tokens only, (B, k, C) (the returned attention
        row is then the first indexed token's)."""
        attn = Attention(self.num_heads, self.dense_init, self.matmul_dtype, name="attn")
        y, probs = attn(layer_norm("norm1")(x), return_probs=True, cls_only=cls_only,
                        query_index=query_index)
        if cls_only:
            x = x[:, :1]
        elif query_index is not None:
            x = jnp.take_along_axis(x, query_index[:, :, None], axis=1)
        x = x + DropPath(self.drop_path)(y, deterministic)
        mlp = Mlp(self.mlp_dim, self.dense_init, self.matmul_dtype, name="mlp")
        y = mlp(layer_norm("norm2")(x))
        x = x + DropPath(self.drop_path)(y, deterministic)
        return x, probs[:, :, 0, :]


def resolve_width(variant: Optional[str], width, depth, num_heads, mlp_dim):
    """Fills width/depth/heads/mlp from a DeiT variant name; explicit values win."""
    if variant is not None:
        if variant not in VARIANTS:
            raise UsageError(f"Unknown DeiT variant {variant!r}; choose one of {sorted(VARIANTS)} "
                             "or give width, depth and num_heads explicitly.")
        w, dp, hd = VARIANTS[variant]
        width, depth, num_heads = width or w, depth or dp, num_heads or hd
    if not (width and depth and num_heads):
        raise UsageError("Give a DeiT variant (Ti, S, B) or all of width, depth and num_heads.")
    if width % num_heads:
        raise UsageError(f"width {width} is not divisible by num_heads {num_heads}.")
    return width, depth, num_heads, mlp_dim or 4 * width


class VitTrunk(nn.Module):
    """The parts LF-ViT and DeiT share: patch embedding, cls token, blocks, final norm, head.

    Subclasses add their position embeddings and call `embed`, `encode` and `head`.
    """
    num_classes: int = 1000
    width: int = _S_WIDTH  # DeiT-S by default
    depth: int = _S_DEPTH
    num_heads: int = _S_HEADS
    mlp_dim: int = 4 * _S_WIDTH
    patch: int = 16
    drop_path: float = 0.1
    dense_init: str = "deit"  # a key of DENSE_INITS
    matmul_dtype: str = "float32"  # operands of every matmul: a key of precision.MATMUL_DTYPES

    def __post_init__(self):
        if self.dense_init not in DENSE_INITS:
            raise UsageError(f"dense_init={self.dense_init!r} is not one of {sorted(DENSE_INITS)}.")
        precision.check(self.matmul_dtype)
        super().__post_init__()

    def setup(self):
        self.patch_embed = PatchEmbed(self.width, self.patch, self.matmul_dtype)
        self.cls_token = self.param("cls_token", trunc_normal, (1, 1, self.width))
        rates = [self.drop_path * i / max(self.depth - 1, 1) for i in range(self.depth)]
        self.blocks = [Block(self.num_heads, self.mlp_dim, r, self.dense_init, self.matmul_dtype)
                       for r in rates]
        self.norm = layer_norm()
        self.head = dense(self.num_classes, self.dense_init, matmul_dtype=self.matmul_dtype)

    def with_cls(self, tokens, pos_embed):
        """[cls; tokens] + pos_embed."""
        cls = jnp.broadcast_to(self.cls_token, (tokens.shape[0], 1, self.width))
        return jnp.concatenate([cls, tokens], axis=1) + pos_embed

    def encode(self, x, train: bool, attn_blocks: Sequence[int] = (), cls_only=False):
        """Runs the blocks and the final norm; returns (features, attn, last_input).

        attn: the class-token attention rows of `attn_blocks`, (len(attn_blocks), B, heads, N),
        or None. With `cls_only` the last block computes only the class token's output and
        features is (B, 1, C): all a classifier needs. last_input: the last block's input
        (B, N, C), from which `finish_tokens` computes other tokens' features later.
        """
        rows = []
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            if i == last:
                last_input = x
            x, cls_row = block(x, deterministic=not train, cls_only=cls_only and i == last)
            if i in attn_blocks:
                rows.append(cls_row)
        return self.norm(x), (jnp.stack(rows) if rows else None), last_input

    def finish_tokens(self, last_input, index, train=False):
        """Final features (B, k, C) of the tokens at `index` (B, k), from the last block's input:
        the same values as those rows of a full `encode`, for k of the N tokens' work."""
        x, _ = self.blocks[-1](last_input, deterministic=not train, query_index=index)
        return self.norm(x)


class DeiT(VitTrunk):
    """Plain DeiT classifier on (B, S, S, 3) images; returns {'logits': (B, classes)}."""
    img_size: int = 224

    def setup(self):
        super().setup()
        n = (self.img_size // self.patch) ** 2
        self.pos_embed = self.param("pos_embed", trunc_normal, (1, 1 + n, self.width))

    def __call__(self, images, train=False):
        check_images(images, self.img_size, self.patch)
        x = self.with_cls(self.patch_embed(images), self.pos_embed)
        features, _, _ = self.encode(x, train, cls_only=True)
        return {"logits": self.head(features[:, 0])}


def check_images(images, size, multiple):
    """Clear errors for the mistakes users make with image batches."""
    if images.ndim != 4:
        raise ValueError(f"Expected images of shape (B, H, W, 3), got shape {images.shape}.")
    _, h, w, c = images.shape
    if c != 3:
        raise ValueError(f"Expected 3 colour channels last (NHWC), got shape {images.shape}; "
                         "convert NCHW with images.transpose(0, 2, 3, 1).")
    if (h, w) != (size, size):
        raise ValueError(f"Expected {size}x{size} images, got {h}x{w}; resize/crop the input or "
                         f"set config.model.img_size={h} (a multiple of {multiple}).")
