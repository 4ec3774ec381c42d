"""RandAugment as timm defines it for DeiT (`rand-m9-mstd0.5-inc1`), on PIL images: each of `n`
layers applies a random op with probability `p` at a magnitude from N(m, mstd) clipped to [0, 10];
`inc1` picks the ops whose strength grows with the magnitude. Geometric ops fill with the dataset
mean, as DeiT's hparams do.
"""
import re

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from lfvit_jax.core.errors import UsageError
from lfvit_jax.data import augment

_MAX_LEVEL = 10.0
_TRANSLATE_PCT = 0.45


def _signed(rng, value):
    return -value if rng.uniform() < 0.5 else value


def _affine(img, coeffs, ctx):
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, resample=ctx["resample"],
                         fillcolor=ctx["fill"])


def _rotate(img, level, rng, ctx):
    return img.rotate(_signed(rng, level / _MAX_LEVEL * 30.0), resample=ctx["resample"],
                      fillcolor=ctx["fill"])


def _shear(horizontal):
    def op(img, level, rng, ctx):
        s = _signed(rng, level / _MAX_LEVEL * 0.3)
        return _affine(img, (1, s, 0, 0, 1, 0) if horizontal else (1, 0, 0, s, 1, 0), ctx)
    return op


def _translate(horizontal):
    def op(img, level, rng, ctx):
        fraction = _signed(rng, level / _MAX_LEVEL * _TRANSLATE_PCT)
        if horizontal:
            return _affine(img, (1, 0, fraction * img.width, 0, 1, 0), ctx)
        return _affine(img, (1, 0, 0, 0, 1, fraction * img.height), ctx)
    return op


def _posterize(img, level, rng, ctx):
    bits = 4 - int(level / _MAX_LEVEL * 4)
    if bits == 0:  # level 10: the Pillow of timm 0.4.5 kept no bit (black); Pillow >= 10 refuses 0
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits)


def _solarize(img, level, rng, ctx):
    return ImageOps.solarize(img, 256 - int(level / _MAX_LEVEL * 256))


def _solarize_add(img, level, rng, ctx):
    add = int(level / _MAX_LEVEL * 110)
    lut = [min(255, i + add) if i < 128 else i for i in range(256)]
    return img.point(lut * len(img.getbands()))


def _enhance(enhancer):
    def op(img, level, rng, ctx):
        return enhancer(img).enhance(1.0 + _signed(rng, level / _MAX_LEVEL * 0.9))
    return op


def _no_level(fn):
    return lambda img, level, rng, ctx: fn(img)


OPS = {
    "AutoContrast": _no_level(ImageOps.autocontrast),
    "Equalize": _no_level(ImageOps.equalize),
    "Invert": _no_level(ImageOps.invert),
    "Rotate": _rotate,
    "PosterizeIncreasing": _posterize,
    "SolarizeIncreasing": _solarize,
    "SolarizeAdd": _solarize_add,
    "ColorIncreasing": _enhance(ImageEnhance.Color),
    "ContrastIncreasing": _enhance(ImageEnhance.Contrast),
    "BrightnessIncreasing": _enhance(ImageEnhance.Brightness),
    "SharpnessIncreasing": _enhance(ImageEnhance.Sharpness),
    "ShearX": _shear(True),
    "ShearY": _shear(False),
    "TranslateXRel": _translate(True),
    "TranslateYRel": _translate(False),
}


def parse(spec):
    """'rand-m9-mstd0.5-inc1' -> dict(m=9.0, n=2, mstd=0.5, p=0.5); only the increasing ops."""
    parts = spec.split("-")
    if parts[0] != "rand":
        raise UsageError(f"RandAugment spec {spec!r} must start with 'rand-', "
                         "e.g. 'rand-m9-mstd0.5-inc1'.")
    out = dict(m=9.0, n=2, mstd=0.0, p=0.5, inc=0)
    for part in parts[1:]:
        match = re.fullmatch(r"([a-z]+)(\d+(?:\.\d*)?)", part)
        if not match or match.group(1) not in out:
            raise UsageError(f"Unknown RandAugment field {part!r} in {spec!r}; "
                             "supported: m<float>, n<int>, mstd<float>, p<float>, inc1.")
        key, value = match.groups()
        out[key] = type(out[key])(float(value))
    if not out["inc"]:
        raise UsageError(f"Only the increasing op set is implemented; add '-inc1' to {spec!r}.")
    return out


class RandAugment:
    def __init__(self, spec, mean, interpolation="bicubic"):
        params = parse(spec)
        self.m, self.n, self.mstd, self.p = params["m"], params["n"], params["mstd"], params["p"]
        self.names = sorted(OPS)
        self.ctx = dict(fill=tuple(int(round(255 * c)) for c in mean),
                        resample=augment.resample_filter(interpolation))

    def __call__(self, img, rng):
        ctx = dict(self.ctx)
        if img.mode == "L":
            ctx["fill"] = ctx["fill"][0]
        for i in rng.integers(0, len(self.names), self.n):
            if rng.uniform() >= self.p:
                continue
            level = self.m
            if self.mstd > 0:
                level = float(np.clip(rng.normal(self.m, self.mstd), 0.0, _MAX_LEVEL))
            img = OPS[self.names[i]](img, level, rng, ctx)
        return img
