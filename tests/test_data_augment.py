"""Augmentation ops checked numerically against numpy references and their definitions."""
import numpy as np
import pytest
from PIL import Image

from lfvit_jax.data import augment, randaugment


def _image(h=40, w=60, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8))


def test_random_resized_crop_box_statistics():
    rng = np.random.default_rng(0)
    h, w = 400, 400  # square, so rejections do not favour one orientation
    areas, ratios = [], []
    for _ in range(2000):
        top, left, ch, cw = augment.random_resized_crop_box(rng, h, w)
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
        areas.append(ch * cw / (h * w))
        ratios.append(cw / ch)
    areas, ratios = np.array(areas), np.array(ratios)
    assert areas.min() >= 0.08 - 0.01 and areas.max() <= 1.0
    # Accepted boxes are a truncated U(0.08, 1) of area: the mean sits well inside (0.3, 0.6).
    assert 0.3 < areas.mean() < 0.6
    assert ratios.min() > 3 / 4 - 0.05 and ratios.max() < 4 / 3 + 0.05
    # log-aspect is symmetric around 0 (uniform on [log 3/4, log 4/3]).
    assert abs(np.log(ratios).mean()) < 0.02


def test_random_resized_crop_fallback_is_centre_crop_with_clamped_ratio():
    class NeverFits:  # an RNG whose boxes never fit, to reach the fallback
        def uniform(self, lo, hi):
            return hi * 10

    assert augment.random_resized_crop_box(NeverFits(), 100, 1000) == (0, 433, 100, 133)
    assert augment.random_resized_crop_box(NeverFits(), 50, 50) == (0, 0, 50, 50)


def test_random_resized_crop_is_crop_then_resize():
    img = _image(60, 80)
    out = augment.random_resized_crop(img, np.random.default_rng(3), 32, "bilinear")
    top, left, h, w = augment.random_resized_crop_box(np.random.default_rng(3), 60, 80)
    ref = img.crop((left, top, left + w, top + h)).resize((32, 32), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))


def test_resize_center_crop_geometry_and_box_mapping():
    img = Image.fromarray(np.arange(100 * 200, dtype=np.uint32).reshape(100, 200)
                          .astype(np.uint8))
    out, (sy, sx, top, left) = augment.resize_center_crop(img, 56, 0.875, "nearest")
    assert out.size == (56, 56)
    # Shorter side 100 -> floor(56 / 0.875) = 64; long side 128; centred crop.
    assert (sy, sx, top, left) == (0.64, 0.64, 4, 36)
    ref = np.asarray(img.resize((128, 64), Image.Resampling.NEAREST))[4:60, 36:92]
    np.testing.assert_array_equal(np.asarray(out), ref)
    # torchvision truncates the long side: 333 x 500 at 224 / 0.875 = 256 -> 256 x 384.
    out, (sy, sx, top, left) = augment.resize_center_crop(_image(333, 500), 224, 0.875)
    assert (sy * 333, sx * 500, top, left) == (pytest.approx(256), pytest.approx(384), 16, 80)
    # With crop_pct 1 and the same size it is the identity.
    same, geometry = augment.resize_center_crop(_image(64, 64), 64, 1.0)
    np.testing.assert_array_equal(np.asarray(same), np.asarray(_image(64, 64)))
    assert geometry == (1.0, 1.0, 0, 0)


def test_color_jitter_factors():
    grey = Image.new("RGB", (4, 4), (100, 100, 100))
    # On flat grey, contrast and saturation are no-ops, so only brightness U(0.6, 1.4) acts.
    values = [np.asarray(augment.color_jitter(grey, np.random.default_rng(s), 0.4))
              for s in range(300)]
    assert all((v == v[0, 0, 0]).all() for v in values)
    levels = np.array([v[0, 0, 0] for v in values])
    assert levels.min() >= 60 and levels.max() <= 140 and levels.std() > 15
    unchanged = augment.color_jitter(_image(), np.random.default_rng(0), 0.0)
    np.testing.assert_array_equal(np.asarray(unchanged), np.asarray(_image()))


def test_normalize_replicates_grey_and_uses_mean_std():
    grey = Image.fromarray(np.full((4, 5), 51, np.uint8))
    x = augment.normalize(grey, (0.1, 0.2, 0.3), (0.5, 0.5, 0.25))
    assert x.shape == (4, 5, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], [(0.2 - 0.1) / 0.5, 0.0, (0.2 - 0.3) / 0.25], atol=1e-6)


def test_horizontal_flip_reverses_columns():
    img = _image()
    flipped = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    np.testing.assert_array_equal(np.asarray(flipped), np.asarray(img)[:, ::-1])


def test_random_erasing_area_and_probability():
    rng = np.random.default_rng(0)
    fractions = []
    for _ in range(1000):
        x = augment.random_erasing(np.zeros((50, 50, 3), np.float32), rng, prob=0.25)
        erased = (x != 0).any(-1)
        fractions.append(erased.mean())
        if erased.any():  # one rectangle of noise
            rows, cols = np.flatnonzero(erased.any(1)), np.flatnonzero(erased.any(0))
            assert erased[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
    fractions = np.array(fractions)
    assert 0.2 < (fractions > 0).mean() < 0.3
    hit = fractions[fractions > 0]
    assert hit.min() >= 0.015 and hit.max() <= 0.36
    assert augment.random_erasing(np.ones((8, 8, 3), np.float32), rng, prob=0.0).min() == 1


def test_mixup_matches_numpy_reference():
    rng_images = np.random.default_rng(1)
    images = rng_images.normal(size=(4, 6, 6, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 3])
    out, targets = augment.mixup_cutmix(images.copy(), labels, np.random.default_rng(5),
                                        num_classes=5, mixup=0.8, cutmix=0.0, switch_prob=0.5,
                                        smoothing=0.1)
    lam = np.random.default_rng(5).beta(0.8, 0.8)
    np.testing.assert_allclose(out, lam * images + (1 - lam) * images[::-1], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-6)
    one_hot = np.full((4, 5), 0.02) + np.eye(5)[labels] * 0.9
    np.testing.assert_allclose(targets, lam * one_hot + (1 - lam) * one_hot[::-1], rtol=1e-5)


def test_cutmix_pastes_the_mirror_and_corrects_lambda():
    images = np.stack([np.full((20, 20, 3), i, np.float32) for i in range(4)])
    out, targets = augment.mixup_cutmix(images.copy(), np.arange(4), np.random.default_rng(2),
                                        num_classes=4, mixup=0.0, cutmix=1.0, switch_prob=0.5,
                                        smoothing=0.0)
    pasted = out[0] == 3  # example 0 is paired with example 3
    area = pasted[..., 0].mean()
    np.testing.assert_allclose(targets[0], [1 - area, 0, 0, area], rtol=1e-6)
    np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-6)
    assert ((out[0] == 0) | pasted).all()


def test_mixup_switch_probability_and_odd_batch_error():
    uses_cutmix = 0
    for seed in range(400):
        images = np.zeros((2, 8, 8, 1), np.float32)
        images[1] = 1
        out, _ = augment.mixup_cutmix(images, np.array([0, 1]), np.random.default_rng(seed),
                                      num_classes=2, mixup=0.8, cutmix=1.0, switch_prob=0.5,
                                      smoothing=0.1)
        values = np.unique(out[0])
        uses_cutmix += set(values.tolist()) <= {0.0, 1.0}  # cutmix copies, mixup blends
    assert 0.42 < uses_cutmix / 400 < 0.58
    with pytest.raises(ValueError, match="even"):
        augment.mixup_cutmix(np.zeros((3, 4, 4, 3), np.float32), np.zeros(3, int),
                             np.random.default_rng(0), num_classes=2, mixup=0.8, cutmix=1.0,
                             switch_prob=0.5, smoothing=0.1)


def test_label_smoothing_without_mixing():
    _, targets = augment.mixup_cutmix(np.zeros((2, 2, 2, 3), np.float32), np.array([1, 0]),
                                      np.random.default_rng(0), num_classes=4, mixup=0.0,
                                      cutmix=0.0, switch_prob=0.5, smoothing=0.1)
    np.testing.assert_allclose(targets, [[0.025, 0.925, 0.025, 0.025],
                                         [0.925, 0.025, 0.025, 0.025]], rtol=1e-6)


def test_rand_augment_parse_and_ops():
    assert randaugment.parse("rand-m9-mstd0.5-inc1") == dict(m=9.0, n=2, mstd=0.5, p=0.5, inc=1)
    with pytest.raises(ValueError, match="inc1"):
        randaugment.parse("rand-m9-mstd0.5")
    with pytest.raises(ValueError, match="Unknown RandAugment field"):
        randaugment.parse("rand-m9-foo")
    img = _image()
    ctx = dict(fill=(124, 116, 104), resample=Image.Resampling.BICUBIC)
    rng = np.random.default_rng(0)
    x = np.asarray(img).astype(int)
    np.testing.assert_array_equal(
        np.asarray(randaugment.OPS["Invert"](img, 9, rng, ctx)), 255 - x)
    # timm's increasing form keeps 4 - int(m / 10 * 4) bits: 2 at magnitude 5, none (black, as
    # the Pillow of the release's time computed it) at 10, which N(9, 0.5) reaches.
    np.testing.assert_array_equal(
        np.asarray(randaugment.OPS["PosterizeIncreasing"](img, 5.0, rng, ctx)), x & 0b11000000)
    np.testing.assert_array_equal(
        np.asarray(randaugment.OPS["PosterizeIncreasing"](img, 10.0, rng, ctx)), 0 * x)
    np.testing.assert_array_equal(
        np.asarray(randaugment.OPS["SolarizeAdd"](img, 10.0, rng, ctx)),
        np.where(x < 128, np.minimum(x + 110, 255), x))
    shifted = np.asarray(randaugment.OPS["TranslateXRel"](img, 10 / 0.45 * 10 / 60, rng, ctx))
    # A translation by exactly +-10 px: the image reappears shifted, the gap filled with the mean.
    if (shifted[:, :10] == ctx["fill"]).all():
        np.testing.assert_array_equal(shifted[:, 10:], x[:, :-10])
    else:
        np.testing.assert_array_equal(shifted[:, :-10], x[:, 10:])
        assert (shifted[:, -10:] == ctx["fill"]).all()
    augmenter = randaugment.RandAugment("rand-m9-mstd0.5-inc1", augment.IMAGENET_MEAN)
    outs = [np.asarray(augmenter(img, np.random.default_rng(s))) for s in range(30)]
    assert all(o.shape == x.shape for o in outs)
    assert sum((o == x).all() for o in outs) < 15  # about 1/4 pass unchanged (both layers skip)
    np.testing.assert_array_equal(np.asarray(augmenter(img, np.random.default_rng(7))),
                                  np.asarray(augmenter(img, np.random.default_rng(7))))
