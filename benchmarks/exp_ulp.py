"""Exhaustive float32 ulp error of xentcy's vector exp, per instruction set.

    python benchmarks/exp_ulp.py            # every float32 input in [-104, 89], each ISA
    python benchmarks/exp_ulp.py --fit-f64  # the Remez fit of the float64 exp's coefficients (mpmath)
"""
import sys

import numpy as np


def fit_f64(degree: int = 11) -> None:
    """Minimax relative error of 1 + r + c2 r^2 + ... + c_degree r^degree against exp on |r| <= ln2/2."""
    import mpmath as mp

    mp.mp.dps = 50
    a = mp.log(2) / 2
    n = degree - 1
    pts = [a * mp.cos(mp.pi * i / n) for i in range(n + 1)]
    grid = [-a + 2 * a * k / 4000 for k in range(4001)]
    for _ in range(30):
        M, b = mp.matrix(n + 1, n + 1), mp.matrix(n + 1, 1)
        for i, r in enumerate(pts):
            for j in range(n):
                M[i, j] = r ** (j + 2)
            M[i, n] = (-1) ** i * mp.e**r
            b[i] = mp.e**r - 1 - r
        sol = mp.lu_solve(M, b)
        c = [sol[j] for j in range(n)]
        es = [(1 + r + r**2 * mp.polyval(c[::-1], r) - mp.e**r) / mp.e**r for r in grid]
        ext = [k for k in range(len(grid)) if (k == 0 or abs(es[k]) >= abs(es[k - 1]))
               and (k == len(grid) - 1 or abs(es[k]) >= abs(es[k + 1]))]
        sel: list[int] = []
        for k in ext:
            if sel and mp.sign(es[sel[-1]]) == mp.sign(es[k]):
                if abs(es[k]) > abs(es[sel[-1]]):
                    sel[-1] = k
            else:
                sel.append(k)
        while len(sel) > n + 1:
            sel.pop(0 if abs(es[sel[0]]) < abs(es[sel[-1]]) else -1)
        if len(sel) < n + 1:
            break
        pts = [grid[k] for k in sel]
    print(f"degree {degree}: max relative error {mp.nstr(max(abs(e) for e in es), 5)}")
    for j, cj in enumerate(c):
        print(f"c{j + 2} = {float(cj).hex()}")


if "--fit-f64" in sys.argv:
    fit_f64()
    sys.exit()

from xentcy._cpu import _core  # noqa: E402

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tests"))
from test_cpu_simd import float32_ulp_error  # noqa: E402

for isa in _core.supported_isas():
    _core.set_isa(isa)
    worst, worst_x, n = 0.0, None, 0
    for lo, hi in ((0x80000000, 0xC2D00001), (0, 0x42B20001)):  # [-0, -104] and [0, 89]
        for start in range(lo, hi, 1 << 25):
            bits = np.arange(start, min(start + (1 << 25), hi), dtype=np.uint32)
            x = bits.view(np.float32)
            out = np.empty_like(x)
            _core.vector_exp(x, out)
            err = float32_ulp_error(x, out)
            i = int(err.argmax())
            n += x.size
            if err[i] > worst:
                worst, worst_x = float(err[i]), float(x[i])
    print(f"{isa}: max error {worst:.3f} ulp at x = {worst_x!r} over {n} float32 inputs in [-104, 89]",
          flush=True)
