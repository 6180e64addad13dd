"""The streaming pipeline of evaluate (issue 13, part 3), on the CPU: the same code that
drives a GPU (two reused slots, a reader thread, a lane with copy and compute events) with
xentcy._stream.RecordingLane in the GPU lane's place and the CUDA backend's kernels compiled
for the host (cuda_host). What only hardware shows (pinned memory, streams, overlap) is
xentcy._stream.CudaLane alone, run by scripts/gpu_check.sh on a lent GPU."""

import numpy as np
import pytest
from backends import load

import xentcy as xc
from conftest import cuda_host_backend
from xentcy import _stream, _testing


def data(N, C, seed=0):
    gen = np.random.default_rng(seed)
    A = gen.standard_normal((N, C)).astype(np.float32)
    y = gen.integers(0, C, N)
    y[::11] = -100
    return A, y


def sums(r):
    return (r.count, r.correct, r.loss_sum, r.denominator, r.entropy_sum)


def assert_same(a, b):
    assert a.count == b.count and a.correct == b.correct
    for x, y in zip(sums(a)[2:], sums(b)[2:], strict=True):
        assert x == pytest.approx(y, rel=1e-12)


@pytest.mark.parametrize("batch_size", [1, 5, 64, 333, 1000, 5000])
def test_the_gpu_pipeline_on_the_cpu(tmp_path, batch_size):
    try:
        load("cuda_host")
    except ImportError as exc:
        pytest.skip(f"cuda_host unavailable: {exc}")
    A, y = data(1000, 37)
    np.save(tmp_path / "a.npy", A)
    mm = np.load(tmp_path / "a.npy", mmap_mode="r")
    lanes = []

    def factory():
        lanes.append(_stream.RecordingLane())
        return lanes[-1]

    with cuda_host_backend(), _testing.cuda_lane(factory):
        want = xc.evaluate(A, y)  # one shot, on the same kernels
        got = xc.evaluate(mm, y, batch_size=batch_size, device="cuda")
    assert_same(got, want)
    # and the CPU core's figures, to float32's rounding
    cpu = xc.evaluate(A, y)
    assert got.correct == cpu.correct and got.loss == pytest.approx(cpu.loss, rel=1e-6)
    (lane,) = lanes
    n_batches = -(-1000 // batch_size)
    # every batch copied, computed and released once, in order, through the two slots
    computed = [slot for what, slot in lane.log if what == "compute"]
    assert computed == [i % 2 for i in range(n_batches)]
    assert [what for what, _ in lane.log].count("copy") == n_batches
    # the device buffers are reused: one set per slot, as large as the first batch
    used = [d for d in lane.device if d is not None]
    assert len(used) == min(2, n_batches)
    assert used[0][0].shape == (min(batch_size, 1000), 37)


def test_a_slot_is_refilled_only_after_its_compute():
    # the reader thread fills slot i % 2 while batch i - 1 computes in the other slot
    lane = _stream.RecordingLane()
    A, y = data(100, 5)
    batches = list(range(10))

    def parts_of(i):
        return [A[10 * i : 10 * i + 10], y[10 * i : 10 * i + 10], None]

    ev = xc.Evaluator()
    for slot, (a, t, _) in _stream.staged_batches(parts_of, len(batches), lane, use_slots=True):
        lane.before_compute(slot)
        ev.update(a, t)
        lane.after_compute(slot)
    assert_same(ev.result(), xc.evaluate(A, y))
    log = lane.log
    for k, (what, slot) in enumerate(log):
        if what == "reuse":
            # the slot's last compute, if any, was done before its refill
            earlier = [w for w, s in log[:k] if s == slot and w in ("compute", "done")]
            assert not earlier or earlier[-1] == "done"


def test_host_slots_reuse_their_buffers():
    slots = _stream.HostSlots()
    a = np.arange(12.0).reshape(4, 3)
    first = slots.fill(0, [a, None])
    again = slots.fill(0, [a[:2] + 1, None])
    assert np.shares_memory(first[0], again[0])
    np.testing.assert_array_equal(again[0], a[:2] + 1)
    assert again[1] is None


def test_memmap_on_the_cpu_is_read_in_place_a_batch_ahead(tmp_path, monkeypatch):
    A, y = data(2000, 50)
    np.save(tmp_path / "a.npy", A)
    mm = np.load(tmp_path / "a.npy", mmap_mode="r")
    touched, slots = [], []
    real_touch = _stream._touch
    monkeypatch.setattr(_stream, "_touch", lambda parts: (touched.append(parts[0].shape), real_touch(parts)))
    monkeypatch.setattr(_stream.HostSlots, "fill", lambda *a: slots.append(1))
    got = xc.evaluate(mm, y, batch_size=300)
    assert_same(got, xc.evaluate(A, y))
    # no copy into host buffers; each batch after the first read ahead (the last has 200 rows)
    assert slots == []
    assert touched == [(300, 50)] * 5 + [(200, 50)]


def test_device_cuda_refuses_device_arrays():
    torch = pytest.importorskip("torch")
    with _testing.cuda_lane(_stream.RecordingLane), pytest.raises(TypeError, match="NumPy"):
        xc.evaluate(torch.zeros((2, 3)), torch.zeros(2, dtype=torch.int64), device="cuda")
    with pytest.raises(ValueError, match="device"):
        xc.evaluate(np.zeros((2, 3)), np.zeros(2, dtype=np.int64), device="tpu")
