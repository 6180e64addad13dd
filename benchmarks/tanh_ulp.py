"""The error of xentcy's vector tanh (the logit soft-cap's) and of its 1 - tanh^2, per
instruction set: every float32 input, and a float64 sample against mpmath.

    python benchmarks/tanh_ulp.py          # the measurement (results/tanh_ulp.txt)
    python benchmarks/tanh_ulp.py --fit    # the Chebyshev fits of P in tanh(x) = x + x^3 P(x^2)

float32: every input in [0, 9.011] (past it tanh rounds to 1; the code is odd in x, the sign
bit set apart, so the negative inputs give the same errors), against float64 NumPy (whose own
error is far below float32's ulp). float64: 200,000 random inputs spread over [0, 1] and
[0, 25] and 2,000 log-spaced ones down to 1e-300, against mpmath at 40 digits. The error of
tanh is in ulp of the result; that of 1 - tanh^2 relative to the value, in units of 2^-24 or
2^-53 (where it is a normal number of the dtype).
"""

from __future__ import annotations

import sys

import numpy as np

THRESHOLD = 0.3025  # 0.55^2: the polynomial's interval in x^2


def fit() -> None:
    import mpmath

    mpmath.mp.dps = 60

    def p(s):
        if s == 0:
            return mpmath.mpf(-1) / 3
        a = mpmath.sqrt(s)
        return (mpmath.tanh(a) - a) / (s * a)

    for n, dtype in ((5, np.float32), (11, np.float64)):
        poly, err = mpmath.chebyfit(p, [0, mpmath.mpf(THRESHOLD)], n, error=True)
        # the relative error of tanh is about x^2 times P's absolute error
        ulp = float(err * THRESHOLD / mpmath.mpf(2) ** -(24 if dtype == np.float32 else 53))
        print(f"{dtype.__name__}: degree {n - 1} in x^2, {ulp:.3f} ulp before rounding, highest first:")
        print("   ", ", ".join(float(dtype(float(c))).hex() for c in poly))


def main() -> None:
    import mpmath

    from xentcy._cpu import _core

    bits = np.arange(0, int(np.float32(9.011).view(np.uint32)) + 1, dtype=np.uint32)
    rng = np.random.default_rng(0)
    x64 = np.concatenate(
        [rng.uniform(0, 1, 100_000), rng.uniform(0, 25, 100_000), np.geomspace(1e-300, 1, 2000)]
    )
    mpmath.mp.dps = 40
    t_ref = np.array([float(mpmath.tanh(v)) for v in x64])
    d_ref = np.array([float(1 / mpmath.cosh(v) ** 2) for v in x64])
    for isa in _core.supported_isas():
        _core.set_isa(isa)
        worst_t, worst_d = (0.0, 0.0), (0.0, 0.0)
        for start in range(0, len(bits), 1 << 24):
            x = bits[start : start + (1 << 24)].view(np.float32)
            t, d = np.empty_like(x), np.empty_like(x)
            _core.vector_tanh(x, t, d)
            xd = x.astype(np.float64)
            want = np.tanh(xd)
            ulp = np.abs(t - want) / np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
            i = int(np.argmax(ulp))
            worst_t = max(worst_t, (float(ulp[i]), float(x[i])))
            d_want = 1 / np.cosh(xd) ** 2
            ok = d_want >= np.finfo(np.float32).tiny
            rel = np.abs(d[ok] - d_want[ok]) / d_want[ok] / 2.0**-24
            if rel.size:
                j = int(np.argmax(rel))
                worst_d = max(worst_d, (float(rel[j]), float(x[ok][j])))
        print(f"{isa} float32: tanh max {worst_t[0]:.3f} ulp at x = {worst_t[1]!r}, 1 - tanh^2 max "
              f"{worst_d[0]:.3f} x 2^-24 relative at x = {worst_d[1]!r}, "
              f"over {len(bits)} inputs in [0, 9.011]")  # fmt: skip
        t, d = np.empty_like(x64), np.empty_like(x64)
        _core.vector_tanh(x64, t, d)
        ulp = np.abs(t - t_ref) / np.spacing(np.abs(t_ref))
        ok = d_ref >= np.finfo(np.float64).tiny
        rel = np.abs(d[ok] - d_ref[ok]) / d_ref[ok] / 2.0**-53
        print(f"{isa} float64: tanh max {ulp.max():.3f} ulp at x = {x64[np.argmax(ulp)]!r}, "
              f"1 - tanh^2 max {rel.max():.3f} x 2^-53 relative at x = {x64[ok][np.argmax(rel)]!r}, "
              f"over {len(x64)} inputs")  # fmt: skip


if __name__ == "__main__":
    fit() if "--fit" in sys.argv[1:] else main()
