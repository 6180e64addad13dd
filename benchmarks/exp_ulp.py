"""Exhaustive float32 ulp error of xentcy's vector exp, per instruction set."""
import numpy as np
from xentcy._cpu import _core
import sys
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tests"))
from test_cpu_simd import float32_ulp_error
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
            i = int(err.argmax()); n += x.size
            if err[i] > worst:
                worst, worst_x = float(err[i]), float(x[i])
    print(f"{isa}: max error {worst:.3f} ulp at x = {worst_x!r} over {n} float32 inputs in [-104, 89]", flush=True)
