"""The language-model options of issue 16 on the CPU core: xentcy.loss_and_grad with z_loss,
softcap and temperature against the plain call, and against a copy of the logits (the floor).

    python benchmarks/bench_lm_options.py [--shapes 2048x32000,8192x1000,65536x10] [--repeats 11]
        [--dtype float32]

Every variant runs in one process, interleaved round by round (so that the machine's noise
falls on all alike), writing into a preallocated gradient; the times are medians. Targets
(issue 16): z_loss at most 1.15x the plain call, softcap at most 2x. A benchmark, not a
test: nothing fails on timing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import xentcy as xc
from xentcy._cpu import _core

VARIANTS = {
    "plain": {},
    "z_loss=1e-4": {"z_loss": 1e-4},
    "temperature=0.7": {"temperature": 0.7},
    "softcap=30": {"softcap": 30.0},
    "softcap=30, temperature=0.7, z_loss=1e-4": {"softcap": 30.0, "temperature": 0.7, "z_loss": 1e-4},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="2048x32000,8192x1000,65536x10")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    for shape in args.shapes.split(","):
        n, c = (int(v) for v in shape.split("x"))
        run(n, c, args.repeats, args.dtype)


def run(n: int, c: int, repeats: int, dtype: str) -> None:
    rng = np.random.default_rng(0)
    # logits of a language model's scale: most well inside a cap of 30, a few near it
    a = (rng.standard_normal((n, c)) * 4).astype(dtype)
    y = rng.integers(0, c, n)
    g = np.empty_like(a)
    floor = np.empty_like(a)
    times: dict[str, list[float]] = {name: [] for name in ("copy", *VARIANTS)}
    for kw in VARIANTS.values():  # warm-up (page faults of g, libraries)
        xc.loss_and_grad(a, y, out=g, **kw)
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(floor, a)
        times["copy"].append(time.perf_counter() - t)
        for name, kw in VARIANTS.items():
            t = time.perf_counter()
            xc.loss_and_grad(a, y, out=g, **kw)
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"\nloss_and_grad ({n}, {c}) {dtype}, {_core.max_threads()} threads, "
          f"{_core.isa()} kernels, medians of {repeats} (ms)")  # fmt: skip
    print("| call | ms | / plain | / copy |")
    print("| --- | ---: | ---: | ---: |")
    for name, ms in med.items():
        print(f"| {name} | {ms:.1f} | {ms / med['plain']:.2f} | {ms / med['copy']:.2f} |")


if __name__ == "__main__":
    main()
