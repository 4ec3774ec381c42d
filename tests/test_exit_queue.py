"""The streaming queue's bookkeeping, without JAX: slots, buckets, completion order."""
import numpy as np
import pytest

from lfvit_jax.inference.exit_queue import FocusQueue


def test_slots_follow_a_ring_per_device():
    q = FocusQueue(devices=2, slots=3)
    hard = np.array([[True, False, True], [False, False, True]])
    slots = q.add(0, hard)
    np.testing.assert_array_equal(slots, [[0, 3, 1], [3, 3, 0]])  # 3 = no slot (exited)
    assert q.longest() == 2
    slots = q.add(1, np.array([[True, True, False], [True, False, False]]))
    np.testing.assert_array_equal(slots, [[2, 0, 3], [1, 3, 3]])  # device 0 wraps round


def test_take_forms_buckets_of_the_oldest_samples():
    q = FocusQueue(devices=2, slots=8)
    q.add(0, np.array([[True, True, True], [True, False, False]]))
    index, taken = q.take(2)
    np.testing.assert_array_equal(index, [[0, 1], [0, 8]])  # device 1 padded with `slots`
    # (position in the flattened bucket, batch, sample as device * per_device + i)
    assert taken == [(0, 0, 0), (1, 0, 1), (2, 0, 3)]
    assert q.longest() == 1
    index, taken = q.take(2)
    np.testing.assert_array_equal(index, [[2, 8], [8, 8]])
    assert taken == [(0, 0, 2)]
    assert q.longest() == 0


def test_batches_complete_in_order_once_every_result_is_back():
    q = FocusQueue(devices=1, slots=8)
    q.add(0, np.array([[True, False, True]]))
    q.add(1, np.array([[False, False, False]]))  # nothing hard: complete at once, but after 0
    q.add(2, np.array([[True, False, False]]))
    assert list(q.complete()) == []
    _, first = q.take(1)  # batch 0 sample 0
    q.finish(first, ["a"])
    assert list(q.complete()) == []  # batch 0 still waits for sample 2
    _, rest = q.take(4)  # batch 0 sample 2 and batch 2 sample 0
    assert [(b, s) for _, b, s in rest] == [(0, 2), (2, 0)]
    q.finish(rest, ["b", "c"])
    assert list(q.complete()) == [(0, {0: "a", 2: "b"}), (1, {}), (2, {0: "c"})]
    assert list(q.complete()) == []


def test_results_are_indexed_by_bucket_position():
    q = FocusQueue(devices=2, slots=4)
    q.add(0, np.array([[False, True], [True, True]]))
    index, taken = q.take(3)
    results = np.arange(6) * 10  # one per bucket row, devices x size flattened
    q.finish(taken, results)
    ((batch, got),) = list(q.complete())
    # device 0: sample 1 at position 0; device 1: samples 2, 3 at positions 3, 4
    assert batch == 0 and got == {1: 0, 2: 30, 3: 40}


@pytest.mark.parametrize("seed", range(3))
def test_random_stream_returns_every_hard_sample_once(seed):
    rng = np.random.default_rng(seed)
    devices, per_device, cap = 3, 4, 2
    q = FocusQueue(devices, slots=per_device + cap)

    def run_bucket():
        # The "device" answers each bucket position with the (batch, sample) queued there.
        _, taken = q.take(cap)
        q.finish(taken, {p: (b, s) for p, b, s in taken})

    expected, done = {}, {}
    for batch in range(20):
        hard = rng.random((devices, per_device)) < 0.6
        q.add(batch, hard)
        expected[batch] = {int(s) for s in np.flatnonzero(hard.reshape(-1))}
        while q.longest() >= cap:
            run_bucket()
        done.update(q.complete())
    while q.longest():
        run_bucket()
    done.update(q.complete())
    assert sorted(done) == list(range(20))
    for batch, results in done.items():
        assert set(results) == expected[batch]
        assert all(results[s] == (batch, s) for s in results)
