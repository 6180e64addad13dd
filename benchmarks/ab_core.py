"""Two builds of the CPU core side by side: the cross-entropy kernel alone, before and after a change.

Timing (both builds loaded in one process, calls alternated, medians; a benchmark, not a test):

    python benchmarks/ab_core.py time BEFORE.so AFTER.so [--repeats 41]

Instruction counts, which this shared VM's noise does not reach (cpu-notes v13): run one build
once on one shape under callgrind, counting the kernel's instructions only, e.g.

    OMP_NUM_THREADS=1 valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        --toggle-collect='cross_entropy_avx2_*' \\
        python benchmarks/ab_core.py once BUILD.so --isa avx2 --shape 16384x3 --dtype float32

A saved build is any ``xentcy/_cpu/_core*.so`` copied aside (for example, built from an older
commit in a ``git worktree``). Class-index targets, every 7th row ignored in ``once``.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from typing import Any

import numpy as np

SHAPES = ((2048, 32000), (8192, 1000), (65536, 10), (65536, 3))


def load_core(path: str) -> Any:
    """A saved build of xentcy._cpu._core, as a module of its own."""
    spec = importlib.util.spec_from_file_location("xentcy._cpu._core", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _data(n: int, c: int, dtype: Any, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((n, c)) * 3).astype(dtype)
    y = rng.integers(0, c, n).astype(np.intp)
    return a, y, np.empty_like(a), np.empty(n), np.empty(0, dtype)


def _call(core: Any, a, y, g, loss, w, want_grad: bool, eps: float = 0.0) -> None:
    try:  # (weight None and no want_grad flag: the entry point since issue 15)
        core.cross_entropy_index(a, y, None, 0.0, eps, -100, 1.0 / a.shape[0], g if want_grad else None, loss)
    except TypeError:  # an older build: an empty weight with a flag, and want_grad
        core.cross_entropy_index(a, y, w, False, eps, -100, 1.0 / a.shape[0], g, want_grad, loss)


def time_ab(before: Any, after: Any, repeats: int) -> None:
    print("| (N, C), dtype, pass | before (ms) | after (ms) | after / before | per-pair ratio [IQR] |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for n, c in SHAPES:
        for dtype in (np.float32, np.float64):
            a, y, g, loss, w = _data(n, c, dtype)
            for want_grad in (True, False):
                times: dict[str, list[float]] = {"before": [], "after": []}
                ratios = []
                for core in (before, after):  # warm-up
                    _call(core, a, y, g, loss, w, want_grad)
                for i in range(repeats):
                    pair = {}
                    for name in ("before", "after") if i % 2 == 0 else ("after", "before"):
                        core = before if name == "before" else after
                        t = time.perf_counter()
                        _call(core, a, y, g, loss, w, want_grad)
                        pair[name] = time.perf_counter() - t
                        times[name].append(pair[name])
                    ratios.append(pair["after"] / pair["before"])
                mb, ma = statistics.median(times["before"]), statistics.median(times["after"])
                q = statistics.quantiles(ratios, n=4)
                what = "loss+grad" if want_grad else "loss"
                print(
                    f"| ({n}, {c}), {np.dtype(dtype).name}, {what} | {mb * 1e3:.3f} | {ma * 1e3:.3f} | "
                    f"{ma / mb:.3f} | {statistics.median(ratios):.3f} [{q[0]:.3f}-{q[2]:.3f}] |"
                )


def once(core: Any, isa: str, n: int, c: int, dtype: str, eps: float) -> None:
    core.set_isa(isa)
    a, y, g, loss, w = _data(n, c, np.dtype(dtype))
    y[::7] = -100
    for want_grad in (True, False):
        _call(core, a, y, g, loss, w, want_grad, eps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    t = sub.add_parser("time", help="alternate the two builds, medians")
    t.add_argument("before")
    t.add_argument("after")
    t.add_argument("--repeats", type=int, default=41)
    o = sub.add_parser("once", help="one build, one shape, once (for callgrind)")
    o.add_argument("core")
    o.add_argument("--isa", default="avx2")
    o.add_argument("--shape", default="16384x3")
    o.add_argument("--dtype", default="float32")
    o.add_argument("--smoothing", type=float, default=0.0)
    args = parser.parse_args()
    if args.mode == "time":
        time_ab(load_core(args.before), load_core(args.after), args.repeats)
    else:
        n, c = (int(v) for v in args.shape.split("x"))
        once(load_core(args.core), args.isa, n, c, args.dtype, args.smoothing)


if __name__ == "__main__":
    main()
