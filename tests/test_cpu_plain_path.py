"""The CPU kernels' plain path, as aarch64 builds it (vector extensions, no intrinsics).

On x86 the extension never builds this path, so the test compiles the kernels with
``-DXENT_PLAIN`` into a small driver (tests/plain_path.c) and checks what it computes
against float64 NumPy references written here: the vector exp in ulp, and the losses and
gradients of rows long and short (the few-classes path), float32 and float64.
"""

import shutil
import subprocess
import sysconfig
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPILER = (sysconfig.get_config_var("CC") or "cc").split()[0]

pytestmark = pytest.mark.skipif(
    shutil.which(COMPILER) is None, reason=f"no C compiler ({COMPILER}) to build the plain path"
)


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    exe = tmp_path_factory.mktemp("plain") / "plain_path"
    subprocess.run(
        [COMPILER, "-O2", "-DXENT_PLAIN", f"-I{ROOT / 'xentcy' / '_cpu'}",
         str(ROOT / "tests" / "plain_path.c"), "-o", str(exe), "-lm"],
        check=True, capture_output=True,
    )
    return exe


def run(driver, *args):
    done = subprocess.run([str(driver), *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def ulp_error(x, got, dtype):
    """|got - exp(x)| in units of dtype's spacing at exp(x) (the subnormal spacing below)."""
    exact = np.exp(np.asarray(x, np.longdouble))
    with np.errstate(over="ignore"):  # exp(x) past the largest float: skipped below
        spacing = np.spacing(np.abs(exact).astype(dtype)).astype(np.longdouble)
    spacing = np.maximum(spacing, np.finfo(dtype).smallest_subnormal)
    finite = np.isfinite(exact) & (exact < np.finfo(dtype).max)
    err = np.where(finite, np.abs(got.astype(np.longdouble) - exact) / spacing, 0)
    return float(np.max(err))


@pytest.mark.parametrize(("dtype", "lo", "hi", "bound"), [
    (np.float32, -104.0, 89.0, 2.0),
    (np.float64, -745.0, 709.0, 1.5),
])
def test_plain_path_exp_is_within_its_ulp_bound(driver, tmp_path, dtype, lo, hi, bound):
    gen = np.random.default_rng(0)
    x = np.concatenate([
        np.linspace(lo, hi, 400_001),
        gen.uniform(-0.35, 0.35, 100_000),
        np.log(2) * (np.arange(-140, 128) + 0.5),  # the reduction's edges
    ]).astype(dtype)
    tag = "f32" if dtype == np.float32 else "f64"
    (tmp_path / "x").write_bytes(x.tobytes())
    run(driver, "exp", tag, tmp_path / "x", tmp_path / "e", x.size)
    got = np.frombuffer((tmp_path / "e").read_bytes(), dtype)
    assert ulp_error(x, got, dtype) <= bound
    special = np.array([-np.inf, np.inf, np.nan, 0.0, -1e30, 1e30], dtype)
    (tmp_path / "x").write_bytes(special.tobytes())
    run(driver, "exp", tag, tmp_path / "x", tmp_path / "e", special.size)
    got = np.frombuffer((tmp_path / "e").read_bytes(), dtype)
    np.testing.assert_array_equal(got, np.array([0, np.inf, np.nan, 1, 0, np.inf], dtype))


def reference(A, y, eps):
    """float64 per-row losses and the gradient of the mean over rows (1/N each)."""
    N, C = A.shape
    a = A.astype(np.float64)
    log_p = a - a.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    kept = y != -100
    q = np.full((N, C), eps / C)
    q[np.flatnonzero(kept), y[kept]] += 1 - eps
    q[~kept] = 0
    return -(q * log_p).sum(1), (np.exp(log_p) * kept[:, None] - q) / N


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize(("N", "C"), [(7, 1000), (3, 4100), (37, 10), (5, 3)])
def test_plain_path_losses_and_gradients_match_float64(driver, tmp_path, dtype, eps, N, C):
    gen = np.random.default_rng(N * C)
    A = (gen.standard_normal((N, C)) * 3).astype(dtype)
    y = gen.integers(0, C, N)
    y[1] = -100
    (tmp_path / "a").write_bytes(A.tobytes())
    (tmp_path / "y").write_bytes(y.astype(np.int64).tobytes())
    tag = "f32" if dtype == np.float32 else "f64"
    run(driver, "xent", tag, tmp_path / "a", tmp_path / "y", tmp_path / "out", N, C, eps)
    out = (tmp_path / "out").read_bytes()
    losses = np.frombuffer(out[: 8 * N], np.float64)
    grad = np.frombuffer(out[8 * N :], dtype).reshape(N, C)
    want_losses, want_grad = reference(A, y, eps)
    rtol = 2e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(losses, want_losses, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(grad, want_grad, rtol=10 * rtol, atol=rtol / N)
