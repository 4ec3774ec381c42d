"""Input pipeline: tfds.testing.mock_data for exact bookkeeping, the embedded dataset for real."""
import io
import logging
import multiprocessing
import time
from unittest import mock

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from lfvit_jax.data import defaults, pipeline
from lfvit_jax.core import parallel
from lfvit_jax.data import cluttered_mnist, pipeline


def _png(value, size=8):
    out = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8)).save(out, format="PNG")
    return out.getvalue()


class FakeSource:
    """Example i is an image whose pixels all equal i % 256, labelled i % 10; some may be bad."""

    def __init__(self, split, n, corrupt=(), bad_label=()):
        self.split, self.n, self.corrupt, self.bad_label = split, n, corrupt, bad_label

    def __repr__(self):
        return f"FakeSource({self.split}, {self.n})"

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        image = b"not an image" if i in self.corrupt else _png(i % 256)
        return {"image": image, "label": 1000 if i in self.bad_label else i % 10}


@pytest.fixture
def fake_tfds():
    """mock_data serving FakeSource splits for imagenet2012 (mock_data's own random examples
    need TensorFlow to encode images, so the data source function is ours)."""
    sizes = {"train": 40, "validation": 23}
    options = {}

    def as_data_source(self, split, decoders=None, **kwargs):
        return FakeSource(split, sizes[split], **options.get(split, {}))

    with tfds.testing.mock_data(as_data_source_fn=as_data_source), \
            mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True):
        yield options


def _identity_cfg(**overrides):
    """ImageNet config at 8 px whose eval view returns raw pixel values (mean 0, std 1/255)."""
    cfg = defaults.imagenet_config()
    cfg.update(image_size=8, crop_pct=1.0, mean=(0.0,) * 3, std=(1 / 255,) * 3, workers=0,
               data_dir="/nonexistent")
    cfg.update(overrides)
    return cfg


def _ids(batch):
    return np.rint(batch["image"][..., 0, 0, 0]).astype(int)


@pytest.mark.parametrize("process_count", [1, 2, 3])
@pytest.mark.parametrize("global_batch", [6, 12])
def test_eval_sees_every_example_once(fake_tfds, process_count, global_batch):
    seen, counts = [], []
    for p in range(process_count):
        batches = list(pipeline.eval_iterator(_identity_cfg(), global_batch, process_index=p,
                                          process_count=process_count))
        counts.append(len(batches))
        for b in batches:
            assert b["image"].shape == (global_batch // process_count, 8, 8, 3)
            assert b["label"].dtype == np.int32 and b["_mask"].dtype == bool
            np.testing.assert_array_equal(b["label"][b["_mask"]], _ids(b)[b["_mask"]] % 10)
            seen += _ids(b)[b["_mask"]].tolist()
    assert len(set(counts)) == 1 and counts[0] == -(-23 // global_batch)
    assert sorted(seen) == list(range(23))


def test_train_batches_shapes_and_soft_targets(fake_tfds):
    cfg = _identity_cfg(mean=defaults.imagenet_config().mean, std=defaults.imagenet_config().std)
    assert pipeline.get_dataset_info(cfg) == dict(num_classes=1000, image_size=8,
                                              train_examples=40, eval_examples=23)
    batch = next(pipeline.train_iterator(cfg, 8, seed=0, process_index=0, process_count=2))
    assert batch["image"].shape == (4, 8, 8, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (4, 1000) and batch["label"].dtype == np.float32
    np.testing.assert_allclose(batch["label"].sum(1), 1.0, rtol=1e-5)
    assert batch["label"].min() == pytest.approx(0.1 / 1000)


def test_train_state_restore_continues_identical_stream(fake_tfds):
    cfg = _identity_cfg(mixup=0.0, cutmix=0.0, rand_augment="", reprob=0.0)
    it = pipeline.train_iterator(cfg, 4, seed=3)
    head = [next(it) for _ in range(3)]
    state = it.get_state()
    tail = [next(it) for _ in range(12)]  # crosses epoch boundaries (10 batches an epoch)
    resumed = pipeline.train_iterator(cfg, 4, seed=3)
    resumed.set_state(state)
    again = pipeline.train_iterator(cfg, 4, seed=3)
    for expected in head + tail:
        np.testing.assert_array_equal(next(again)["image"], expected["image"])
    for expected in tail:
        got = next(resumed)
        np.testing.assert_array_equal(got["image"], expected["image"])
        np.testing.assert_array_equal(got["label"], expected["label"])
    other = next(pipeline.train_iterator(cfg, 4, seed=4))
    assert not np.array_equal(other["image"], head[0]["image"])


@pytest.mark.parametrize("process_count", [1, 2, 3])
@pytest.mark.parametrize("workers", [0, 2])
def test_train_shards_disjoint_and_complete(process_count, workers):
    n = 12
    sampler = pipeline.TrainSampler(n, 6, process_count, workers, seed=0)
    shards = [[sampler.record_key(i * process_count + p) for i in range(n // process_count)]
              for p in range(process_count)]
    flat = sum(shards, [])
    assert len(set(flat)) == len(flat) == n  # disjoint, and together every record
    next_epoch = [sampler.record_key(n + i) for i in range(n)]
    assert sorted(next_epoch) == list(range(n)) and next_epoch != flat[:n]
    assert sorted(map(sampler.slot, range(4 * n))) == list(range(4 * n))


def test_train_iterators_of_two_processes_split_each_epoch(fake_tfds):
    cfg = _identity_cfg(mixup=0.0, cutmix=0.0, rand_augment="", color_jitter=0.0, reprob=0.0,
                        random_resized_crop=False, repeated_aug=1)
    epochs = []
    for p in range(2):
        it = pipeline.train_iterator(cfg, 8, seed=0, process_index=p, process_count=2)
        batches = [next(it) for _ in range(10)]  # 2 epochs of 5 batches of 4
        ids = np.concatenate([_ids(b) for b in batches])
        labels = np.concatenate([b["label"].argmax(1) for b in batches])
        np.testing.assert_array_equal(labels, ids % 10)
        epochs.append(ids.reshape(2, 20))
    for e in range(2):
        assert sorted(np.concatenate([epochs[0][e], epochs[1][e]])) == list(range(40))
    assert not np.array_equal(epochs[0][0], epochs[0][1])  # reshuffled each epoch


def test_repeated_augmentation_as_the_releases_sampler():
    """RASampler: [a, a, a, b, b, b, ...] per epoch; rank p takes slots p, p + P, ... Here 14
    records, global batch 6 on 3 processes: 2 steps (12 slots, 4 images) an epoch."""
    sampler = pipeline.TrainSampler(14, 6, 3, workers=0, seed=0, repeats=3)
    slots = [sampler.record_key(i) for i in range(24)]  # position = slot without workers
    for epoch in (slots[:12], slots[12:]):
        assert all(epoch[3 * k] == epoch[3 * k + 1] == epoch[3 * k + 2] for k in range(4))
        assert len(set(epoch)) == 4
    # Position i goes to process i % 3: the three copies of a record land on three processes.
    assert sampler[0].rng.uniform() != sampler[1].rng.uniform()  # but augment differently


@pytest.mark.slow
@pytest.mark.parametrize("process_count,workers", [(2, 2), (3, 3), (1, 4)])
def test_repeated_copies_share_a_global_batch_with_workers(fake_tfds, process_count, workers):
    """A real pipeline with grain workers: every step's global batch holds each of its images
    three times (on different processes where there are several), no image is in two steps of
    an epoch, the batches are the inline pipeline's, and the stream resumes exactly."""
    cfg = _identity_cfg(mixup=0.0, cutmix=0.0, rand_augment="", color_jitter=0.0, reprob=0.0,
                        random_resized_crop=False, repeated_aug=3, workers=workers)
    inline_cfg = cfg.copy_and_resolve_references()
    inline_cfg.workers = 0

    def iterators(c):
        return [pipeline.train_iterator(c, 12, seed=0, process_index=p,
                                        process_count=process_count)
                for p in range(process_count)]
    its, inline = iterators(cfg), iterators(inline_cfg)
    steps = []  # 40 records // 12: 3 steps an epoch, 4 images x 3 copies each
    for _ in range(6):
        batches = [next(it) for it in its]
        for b, it in zip(batches, inline):
            np.testing.assert_array_equal(b["image"], next(it)["image"])
        ids = [_ids(b) for b in batches]
        counts = np.bincount(np.concatenate(ids), minlength=40)
        assert sorted(counts[counts > 0]) == [3] * 4
        if process_count == 3:  # the copies of an image are on three processes
            assert all(len(set(i)) == 4 for i in ids)
        steps.append(set(np.concatenate(ids)))
    for epoch in (steps[:3], steps[3:]):
        assert len(set.union(*epoch)) == 12
    state = its[0].get_state()
    want = next(its[0])["image"]
    resumed = iterators(cfg)[0]
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["image"], want)


def test_corrupt_images_skipped_or_fatal(fake_tfds, caplog):
    fake_tfds["validation"] = dict(corrupt=(4, 9))
    fake_tfds["train"] = dict(corrupt=tuple(range(0, 40, 2)))
    with caplog.at_level(logging.WARNING):
        batches = list(pipeline.eval_iterator(_identity_cfg(), 12))
    seen = sum((_ids(b)[b["_mask"]].tolist() for b in batches), [])
    assert sorted(seen) == sorted(set(range(23)) - {4, 9})
    assert "2 corrupt images" in caplog.text
    # Training skips them: only the odd (readable) examples appear.
    train = pipeline.train_iterator(_identity_cfg(mixup=0.0, cutmix=0.0, rand_augment="",
                                              reprob=0.0, random_resized_crop=False), 4, seed=0)
    labels = np.concatenate([next(train)["label"].argmax(1) for _ in range(5)])
    assert (labels % 2 == 1).all()
    with pytest.raises(ValueError, match="Corrupt or unreadable image"):
        list(pipeline.eval_iterator(_identity_cfg(on_corrupt="error"), 12))


def test_label_out_of_range_is_an_error(fake_tfds):
    fake_tfds["validation"] = dict(bad_label=(5,))
    with pytest.raises(ValueError, match="outside"):
        list(pipeline.eval_iterator(_identity_cfg(), 12))


def test_unprepared_dataset_names_the_command(tmp_path):
    cfg = defaults.imagenet_config()
    cfg.data_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="lfvit prepare imagenet2012"):
        pipeline.get_dataset_info(cfg)
    cfg.name = "my_folder_set"
    with pytest.raises(FileNotFoundError, match="prepare folder ROOT --name my_folder_set"):
        pipeline.train_iterator(cfg, 8, seed=0)


def test_batch_size_errors(fake_tfds):
    with pytest.raises(ValueError, match="multiple of the process count"):
        pipeline.eval_iterator(_identity_cfg(), 10, process_index=0, process_count=3)
    with pytest.raises(ValueError, match="must be even; got 3"):
        pipeline.train_iterator(_identity_cfg(), 6, seed=0, process_index=0, process_count=2)


# --- the real embedded dataset ---------------------------------------------------------------

@pytest.fixture(scope="module")
def mnist_cfg(tmp_path_factory):
    cfg = defaults.cluttered_mnist_config()
    cfg.data_dir = str(tmp_path_factory.mktemp("tfds"))
    return cfg


def test_cluttered_mnist_digits_split_disjoint():
    train_x, train_y, test_x, test_y = cluttered_mnist.load_digits()
    assert train_x.shape == (4000, 28, 28) and test_x.shape == (1000, 28, 28)
    np.testing.assert_array_equal(np.bincount(train_y), [400] * 10)
    np.testing.assert_array_equal(np.bincount(test_y), [100] * 10)
    train_set = {d.tobytes() for d in train_x}
    assert not any(d.tobytes() in train_set for d in test_x)


def test_compose_places_digit_inside_its_box():
    _, _, digits, _ = cluttered_mnist.load_digits()
    for seed in range(20):
        canvas, box = cluttered_mnist.compose(digits[seed], digits, np.random.default_rng(seed))
        y0, x0, y1, x1 = box.astype(int)
        assert 0 <= y0 < y1 <= 64 and 0 <= x0 < x1 <= 64
        ink = cluttered_mnist.ink_box(digits[seed]).astype(int)
        np.testing.assert_array_equal(  # the digit's ink is under the box (clutter may add)
            np.maximum(canvas[y0:y1, x0:x1], digits[seed][ink[0]:ink[2], ink[1]:ink[3]]),
            canvas[y0:y1, x0:x1])
        assert (canvas[y0:y1, x0:x1] >= digits[seed][ink[0]:ink[2], ink[1]:ink[3]]).all()
        assert canvas[y0:y1, x0:x1].sum() < canvas.sum()  # there is clutter outside


@pytest.mark.slow
def test_cluttered_mnist_concurrent_first_use(tmp_path):
    """Two processes sharing a data_dir build it at the same time (as a multi-process run
    would); both must end up reading it."""
    cfg = defaults.cluttered_mnist_config()
    cfg.data_dir = str(tmp_path)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        infos = pool.map(pipeline.get_dataset_info, [cfg, cfg])
    assert infos[0] == infos[1] and infos[0]["eval_examples"] == 1000


@pytest.mark.slow
def test_cluttered_mnist_eval_is_fixed_and_boxed(mnist_cfg):
    assert pipeline.get_dataset_info(mnist_cfg) == dict(num_classes=10, image_size=64,
                                                    train_examples=4000, eval_examples=1000)
    batches = list(pipeline.eval_iterator(mnist_cfg, 384))
    assert len(batches) == 3 and sum(b["_mask"].sum() for b in batches) == 1000
    labels = np.concatenate([b["label"][b["_mask"]] for b in batches])
    np.testing.assert_array_equal(np.bincount(labels), [100] * 10)
    b = batches[0]
    assert b["image"].shape == (384, 64, 64, 3) and b["bbox"].dtype == np.float32
    np.testing.assert_array_equal(b["image"][..., 0], b["image"][..., 2])  # grey replicated
    assert b["image"].min() == -1.0 and b["image"].max() == 1.0
    for image, (y0, x0, y1, x1) in zip(b["image"][:50, ..., 0], b["bbox"][:50].astype(int)):
        assert 3 <= y1 - y0 <= 28 and 1 <= x1 - x0 <= 28
        inside = image[y0:y1, x0:x1] > -1
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
    again = next(iter(pipeline.eval_iterator(mnist_cfg, 384)))
    np.testing.assert_array_equal(again["image"], b["image"])


def test_cluttered_mnist_training_is_fresh_and_resumable(mnist_cfg):
    it = pipeline.train_iterator(mnist_cfg, 8, seed=0)
    first = next(it)
    assert first["image"].shape == (8, 64, 64, 3) and first["label"].shape == (8, 10)
    np.testing.assert_allclose(np.sort(first["label"], 1)[:, -2:], [[0.01, 0.91]] * 8,
                               rtol=1e-5)
    state = it.get_state()
    expected = next(it)
    resumed = pipeline.train_iterator(mnist_cfg, 8, seed=0)
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["image"], expected["image"])
    # The same digit record drawn at two positions gets two different canvases.
    source = pipeline.prepared_builder(mnist_cfg).as_data_source(
        "train", decoders={"image": tfds.decode.SkipDecoding()})
    pool = np.zeros((1, 28, 28), np.uint8)
    transform = pipeline.TrainExample(mnist_cfg, 10, pool)
    a = transform.random_map(source[0], np.random.default_rng([0, 1]))
    b = transform.random_map(source[0], np.random.default_rng([0, 4001]))
    assert a["label"] == b["label"] and not np.array_equal(a["image"], b["image"])


def test_to_global_builds_data_parallel_arrays():
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    batch = {"image": np.arange(16 * 2 * 3, dtype=np.float32).reshape(16, 2, 3),
             "_mask": np.arange(16) % 3 == 0}
    out = parallel.to_global(batch, sharding)
    assert out["image"].shape == (16, 2, 3) and out["image"].sharding == sharding
    assert len(out["image"].addressable_shards) == len(jax.devices())
    np.testing.assert_array_equal(np.asarray(out["image"]), batch["image"])
    np.testing.assert_array_equal(np.asarray(out["_mask"]), batch["_mask"])


@pytest.mark.slow
def test_grain_workers_give_the_inline_batches_and_resume(mnist_cfg):
    """Each grain worker builds whole batches from every other position; the sampler maps the
    positions so that the batches (examples, order and augmentation) are the inline ones. A
    restored state continues the 2-worker stream exactly (grain refuses a state from another
    worker count)."""
    inline = pipeline.train_iterator(mnist_cfg, 4, seed=1)
    cfg = mnist_cfg.copy_and_resolve_references()
    cfg.workers = 2
    pooled = pipeline.train_iterator(cfg, 4, seed=1)
    for _ in range(3):
        got, want = next(pooled), next(inline)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])
    state = pooled.get_state()
    expected = [next(pooled)["image"] for _ in range(2)]
    resumed = pipeline.train_iterator(cfg, 4, seed=1)
    resumed.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(resumed)["image"], want)


@pytest.mark.slow
def test_eval_with_grain_workers_matches_inline(mnist_cfg):
    cfg = mnist_cfg.copy_and_resolve_references()
    cfg.workers = 2
    # 80 per process and batch, 400 positions per process: 200 per worker, not whole batches.
    inline = list(pipeline.eval_iterator(mnist_cfg, 240, process_index=1, process_count=3))
    parallel = list(pipeline.eval_iterator(cfg, 240, process_index=1, process_count=3))
    assert len(parallel) == len(inline) == 5
    for got, want in zip(parallel, inline):
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_prefetch_thread_keeps_the_stream_and_its_state(mnist_cfg):
    """The background thread runs ahead, but the state is the consumed position: a resume
    continues the stream exactly as the plain iterator does; errors reach the consumer."""
    plain_cfg = mnist_cfg.copy_and_resolve_references()
    plain_cfg.prefetch = 0
    plain = pipeline.train_iterator(plain_cfg, 8, seed=0)
    ahead = pipeline.train_iterator(mnist_cfg, 8, seed=0)
    assert isinstance(ahead, pipeline.Prefetch) and not isinstance(plain, pipeline.Prefetch)
    for _ in range(3):
        np.testing.assert_array_equal(next(ahead)["image"], next(plain)["image"])
    time.sleep(0.5)  # let the thread fill its queue
    assert ahead.get_state() == plain.get_state()
    resumed = pipeline.train_iterator(mnist_cfg, 8, seed=0)
    resumed.set_state(ahead.get_state())
    np.testing.assert_array_equal(next(resumed)["image"], next(plain)["image"])
    ahead.set_state(plain.get_state())  # stops the thread, rewinds
    np.testing.assert_array_equal(next(ahead)["image"], next(plain)["image"])

    class Broken:
        def get_state(self):
            return b"0"

        def __next__(self):
            raise ValueError("corrupt shard")
    with pytest.raises(ValueError, match="corrupt shard"):
        next(pipeline.Prefetch(Broken(), 2))
