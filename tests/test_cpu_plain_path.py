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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("C", [3, 10, 1000, 70000])
def test_plain_path_confident_rows_keep_their_digits(driver, tmp_path, dtype, C):
    # the target far above the others (s = 1 + delta, delta ~1e-9..1e-30): the loss, the
    # target's gradient, log_softmax there and logsumexp of the row shifted to a max of 0,
    # against mpmath at 50 digits (tests/test_confident_rows.py does this for the x86 paths)
    mp = pytest.importorskip("mpmath").mp
    gen = np.random.default_rng(C)
    bigs = (20.0, 40.0) if dtype == np.float32 else (40.0, 70.0)
    N = len(bigs)
    # the others on a grid where every A_c - m is exact in the dtype
    grid = 2.0**-16 if dtype == np.float32 else 2.0**-45
    A = np.round(gen.standard_normal((N, C)) / grid) * grid
    y = gen.integers(0, C, N)
    A[np.arange(N), y] = bigs
    A = A.astype(dtype)
    Q = np.zeros_like(A)
    Q[np.arange(N), y] = 1
    tag = "f32" if dtype == np.float32 else "f64"
    (tmp_path / "a").write_bytes(A.tobytes())
    (tmp_path / "y").write_bytes(y.astype(np.int64).tobytes())
    (tmp_path / "q").write_bytes(Q.tobytes())
    (tmp_path / "a0").write_bytes((A - A.max(axis=1, keepdims=True)).astype(dtype).tobytes())
    got = {}
    for name, args in [("index", ("xent", tmp_path / "y")), ("smoothing", ("xent", tmp_path / "y")),
                       ("probability", ("xentq", tmp_path / "q"))]:
        eps = 0.1 if name == "smoothing" else 0.0
        run(driver, args[0], tag, tmp_path / "a", args[1], tmp_path / "out", N, C, eps)
        out = (tmp_path / "out").read_bytes()
        grad = np.frombuffer(out[8 * N:], dtype).reshape(N, C)
        got[name] = (np.frombuffer(out[: 8 * N], np.float64), grad[np.arange(N), y] * N)
    run(driver, "lsm", tag, tmp_path / "a", tmp_path / "out", N, C)
    lsm = np.frombuffer((tmp_path / "out").read_bytes(), dtype).reshape(N, C)[np.arange(N), y]
    run(driver, "lse", tag, tmp_path / "a0", tmp_path / "out", N, C)
    lse0 = np.frombuffer((tmp_path / "out").read_bytes(), dtype)
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    errs = {}

    def err(what, got, want):
        errs[what] = max(errs.get(what, 0.0), float(abs(mp.mpf(float(got)) - want) / abs(want)))

    with mp.workdps(50):
        for i in range(N):
            a = [mp.mpf(float(v)) for v in A[i]]
            m = max(a)
            s = mp.fsum(mp.exp(v - m) for v in a)
            lse = m + mp.log(s)
            p_y = mp.exp(a[y[i]] - lse)
            eps = mp.mpf(0.1)
            want = {
                "index": (lse - a[y[i]], p_y - 1),
                # (1 - eps)(lse - A_y) + (eps / C) sum_c (lse - A_c); p_y - (1 - eps + eps / C)
                "smoothing": ((1 - eps) * (lse - a[y[i]]) + eps / C * mp.fsum(lse - v for v in a),
                              p_y - (1 - eps + eps / C)),
                "probability": (lse - a[y[i]], p_y - 1),
            }
            for name, (loss, grad) in want.items():
                err(f"{name} loss", got[name][0][i], loss)
                err(f"{name} grad", got[name][1][i], grad)
            err("log_softmax", lsm[i], a[y[i]] - lse)
            err("logsumexp", lse0[i], mp.log(mp.fsum(mp.exp(v - m) for v in a)))
    bad = {k: v for k, v in errs.items() if not v <= rtol}
    assert not bad, f"relative errors above {rtol:g}: {bad}"
