"""The CUDA emulation itself (tests/cuda_host): the hardware's semantics, and loud errors.

What runs xentcy's kernels on the CPU must be right where a kernel is right
(shuffles, barriers, shared memory, half conversions, the arguments as
packed) and fail with an exception where the hardware's behaviour would be
undefined, or the conformance suite on ``cuda_host`` would prove nothing.
The probe kernels are in ``tests/cuda_host/probe_kernels.cu``.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

cuda_host = pytest.importorskip("cuda_host")
try:
    cuda_host.library()
except ImportError as exc:
    pytest.skip(f"backend cuda_host unavailable: {exc}", allow_module_level=True)

import xentcy as xc  # noqa: E402
from xentcy import _cuda, _testing  # noqa: E402

PROBES = Path(cuda_host.__file__).with_name("probe_kernels.cu")
PROBE_NAMES = (
    "probe_shuffle<float>", "probe_shuffle<double>", "probe_reverse_in_shared", "probe_partial_warp_shuffle",
    "probe_read_outside_mask", "probe_exit_before_barrier", "probe_different_barriers",
    "probe_different_shuffles", "probe_vector_load", "probe_read_past_end", "probe_arguments",
)  # fmt: skip


@pytest.fixture(scope="module")
def probes():
    return cuda_host.HostLauncher(cuda_host.library(False, PROBES, PROBE_NAMES))


def run(probes, name, grid, block, *args):
    probes.launch("float32", name, grid, block, args)


# --- the hardware's semantics ------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("width", [32, 16, 8, 4, 2, 1])
@pytest.mark.parametrize("lane_mask", [1, 2, 4, 8, 16, 3, 31])
def test_shfl_xor_gives_each_lane_the_value_of_lane_xor_mask_within_its_width(
    probes, dtype, width, lane_mask
):
    values = np.arange(128, dtype=dtype) * 1.5 + 0.25  # 2 blocks of 2 warps
    out = np.zeros_like(values)
    name = f"probe_shuffle<{'float' if dtype == np.float32 else 'double'}>"
    run(probes, name, 2, 64, values, out, np.int32(lane_mask), np.int32(width))
    lane = np.arange(128) % 32
    src = lane ^ lane_mask
    # CUDA: a source lane in a later segment of `width` lanes gives the caller its own value
    own = src >= (lane & ~(width - 1)) + width
    want = np.where(own, values, values[np.arange(128) - lane + src % 32])
    np.testing.assert_array_equal(out, want)


def test_barrier_and_shared_memory_reverse_each_block(probes):
    values = np.arange(3 * 256, dtype=np.float32)
    out = np.zeros_like(values)
    for order in (0, 1, 2):
        launcher = cuda_host.HostLauncher(probes.lib, block_seed=7, thread_order=order)
        launcher.launch("float32", "probe_reverse_in_shared", 3, 256, (values, out))
        np.testing.assert_array_equal(out, values.reshape(3, 256)[:, ::-1].reshape(-1))


def test_half_conversions_round_to_nearest_even_as_numpy_and_ml_dtypes():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    lib = cuda_host.library()
    bits = np.arange(1 << 16, dtype=np.uint16)
    for to_float, dtype in ((lib.cuda_host_half_to_float, np.float16),
                            (lib.cuda_host_bfloat16_to_float, ml_dtypes.bfloat16)):
        got = np.array([to_float(int(b)) for b in bits], np.float32)
        want = bits.view(dtype).astype(np.float32)
        np.testing.assert_array_equal(got, want)  # NaNs compare equal here
    rng = np.random.default_rng(0)
    halves = bits.view(np.float16).astype(np.float64)
    halves = np.sort(halves[np.isfinite(halves)])
    f = np.concatenate([
        rng.standard_normal(20000).astype(np.float32) * 10.0 ** rng.integers(-9, 6, 20000),
        halves.astype(np.float32),  # exact
        ((halves[:-1] + halves[1:]) / 2).astype(np.float32),  # midpoints: ties to even
        np.array([7e4, 65520.0, 65519.0, 1e-8, 6e-8, 3e-38, 3.4e38, np.inf, -np.inf], np.float32),
    ])
    f = f[~np.isnan(f)]
    for from_float, dtype in ((lib.cuda_host_float_to_half, np.float16),
                              (lib.cuda_host_float_to_bfloat16, ml_dtypes.bfloat16)):
        got = np.array([from_float(float(x)) for x in f], np.uint16)
        with np.errstate(over="ignore"):
            want = f.astype(dtype).view(np.uint16)
        np.testing.assert_array_equal(got, want)


def test_arguments_reach_the_kernel_as_packed(probes):
    out = np.zeros(4, np.int64)
    run(probes, "probe_arguments", 1, 64, out, np.int64(-(2**40)), np.int32(-7), np.float64(3.0),
        np.asarray(9.0))  # fmt: skip
    np.testing.assert_array_equal(out, [-(2**40), -7, 3, 9])
    run(probes, "probe_arguments", 1, 64, out, np.int64(1), np.int32(2), np.float64(3.0), np.uint64(0))
    assert out[3] == -1  # the null pointer


# --- loud errors where the hardware would be undefined (or refuse) --------------------------

@pytest.mark.parametrize("name, grid, block, match", [
    ("probe_partial_warp_shuffle", 1, 64, "__shfl_xor_sync reached by only part of warp 0"),
    ("probe_read_outside_mask", 1, 32, "outside the mask"),
    ("probe_exit_before_barrier", 2, 64,
     r"__syncthreads reached by only part of the block.*thread 3 .* exited"),
    ("probe_different_barriers", 1, 64, "different __syncthreads calls"),
    ("probe_different_shuffles", 1, 32, "different __shfl_xor_sync calls"),
])  # fmt: skip
def test_undefined_synchronisation_is_an_error(probes, name, grid, block, match):
    with pytest.raises(cuda_host.EmulationError, match=match):
        run(probes, name, grid, block, np.zeros(grid * block, np.float32))


def test_misaligned_vector_load_is_an_error(probes):
    a = np.arange(4 * 40, dtype=np.float32)
    assert a.ctypes.data % 16 == 0
    out = np.zeros(32, np.float32)
    run(probes, "probe_vector_load", 1, 32, a, out, np.int32(4))  # aligned: fine
    np.testing.assert_array_equal(out, a[4:4 + 128].reshape(32, 4).sum(axis=1))
    with pytest.raises(cuda_host.EmulationError, match="misaligned access .* needs 16-byte alignment"):
        run(probes, "probe_vector_load", 1, 32, a, out, np.int32(1))


@pytest.mark.parametrize("args, match", [
    ((np.zeros(4, np.int64), np.int32(1), np.int32(2), np.float64(3.0), np.uint64(0)),
     r"argument 1 is int64, got a int32 scalar"),
    ((np.zeros(4, np.int64), np.int64(1), np.int32(2), np.int64(3), np.uint64(0)),
     r"argument 3 is float64, got a int64 scalar"),
    ((np.zeros(4, np.int32), np.int64(1), np.int32(2), np.float64(3.0), np.uint64(0)),
     r"argument 0 is int64\*, got an array of int32"),
    ((np.zeros(4, np.int64), np.int64(1), np.int32(2), np.float64(3.0), np.uint64(5)),
     r"argument 4 is const float64\*, got a uint64 scalar"),
    ((np.zeros(4, np.int64), np.int64(1), np.int32(2), np.float64(3.0)), "takes 5 arguments, got 4"),
    ((np.zeros(4, np.int64).view(np.int64)[::1], np.int64(1), np.float64(3.0), np.int32(2), np.uint64(0)),
     "argument 2 is int32"),
])  # fmt: skip
def test_a_wrong_argument_type_order_or_count_is_an_error(probes, args, match):
    with pytest.raises(cuda_host.EmulationError, match=match):
        run(probes, "probe_arguments", 1, 64, *args)


def test_a_read_only_array_where_the_kernel_writes_is_an_error(probes):
    out = np.zeros(4, np.int64)
    out.flags.writeable = False
    with pytest.raises(cuda_host.EmulationError, match="read-only, and the kernel writes it"):
        run(probes, "probe_arguments", 1, 64, out, np.int64(1), np.int32(2), np.float64(3.0), np.uint64(0))


def test_a_block_past_the_launch_bound_or_an_unknown_kernel_is_an_error(probes):
    out = np.zeros(4, np.int64)
    with pytest.raises(cuda_host.EmulationError, match=r"exceeds the kernel's __launch_bounds__\(64\)"):
        run(probes, "probe_arguments", 1, 128, out, np.int64(1), np.int32(2), np.float64(3.0), np.uint64(0))
    with pytest.raises(cuda_host.EmulationError, match="no kernel instantiation named"):
        run(probes, "probe_arguments<float>", 1, 64)


def test_the_next_launch_works_after_an_error(probes):
    with pytest.raises(cuda_host.EmulationError, match="__syncthreads reached by only part of the block"):
        run(probes, "probe_exit_before_barrier", 1, 64, np.zeros(64, np.float32))
    test_barrier_and_shared_memory_reverse_each_block(probes)


def test_a_read_past_the_array_is_reported_by_the_asan_build(tmp_path):
    """AddressSanitizer's build, in a subprocess with its runtime preloaded (as scripts/sanitize.sh)."""
    found = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True)
    asan = found.stdout.strip()
    if not os.path.isabs(asan):
        pytest.skip("gcc has no AddressSanitizer runtime")
    script = (
        "import sys, numpy as np\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import cuda_host\n"
        f"lib = cuda_host.library(True, cuda_host.Path({str(PROBES)!r}), {PROBE_NAMES!r})\n"
        "launcher = cuda_host.HostLauncher(lib)\n"
        "a, out = np.ones(8, np.float32), np.zeros(32, np.float32)\n"
        "launcher.launch('float32', 'probe_read_past_end', 1, 32, (a, out, np.int64(7)))\n"
        "print('in bounds: fine', flush=True)\n"
        "launcher.launch('float32', 'probe_read_past_end', 1, 32, (a, out, np.int64(8)))\n"
        "print('past the end: not reported')\n"
    )
    env = dict(os.environ, LD_PRELOAD=asan, ASAN_OPTIONS="detect_leaks=0:verify_asan_link_order=0")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=600)  # fmt: skip
    assert "in bounds: fine" in done.stdout, done.stderr[-3000:]
    assert "not reported" not in done.stdout
    assert done.returncode != 0
    assert "AddressSanitizer: heap-buffer-overflow" in done.stderr, done.stderr[-3000:]
    assert "probe_read_past_end" in done.stderr


# --- xentcy's kernels: the order of blocks and threads does not matter -----------------

def _all_results(a, y, q):
    out = []
    for kwargs in ({}, {"label_smoothing": 0.1, "weight": np.linspace(0.5, 1.5, a.shape[1])}):
        out += list(xc.loss_and_grad(a, y, reduction="none", **kwargs))
        out += list(xc.loss_and_grad(a, q, reduction="sum", **kwargs))
        out.append(xc.cross_entropy(a, y, **kwargs))
    return out + [xc.softmax(a), xc.log_softmax(a), xc.logsumexp(a)]


@pytest.mark.parametrize("shape", [(37, 3), (70, 10), (9, 1000), (4, 3000), (2, 20000)])
def test_results_are_bitwise_the_same_for_any_block_and_thread_order(shape):
    rng = np.random.default_rng(1)
    a = (rng.standard_normal(shape) * 3).astype(np.float32)
    y = rng.integers(0, shape[1], shape[0])
    y[::5] = -100
    q = rng.random(shape).astype(np.float32)
    results = []
    for seed, order in ((0, 0), (12345, 1), (987, 2)):
        with _testing.numpy_arrays_on(_cuda.CudaBackend(np, cuda_host.HostLauncher(block_seed=seed,
                                                                                   thread_order=order))):
            results.append(_all_results(a, y, q))
    for other in results[1:]:
        for x, z in zip(results[0], other, strict=True):
            np.testing.assert_array_equal(x, z)
