"""What a second thread can give: memory-bound passes on one and on two threads.

Times, in one process and alternately, three plain NumPy passes over float32 (N, C) logits
(``np.max``: a read; ``np.copyto``: a read and a streamed write; ``np.multiply(A, 1, out=G)``:
a read and a plain write, which reads each line of G first) on one thread and split in two
halves over two threads, next to xentcy's ``loss_and_grad`` on one and two threads. Where the
two-thread passes are no faster than the one-thread ones, one core already saturates the
memory, and xentcy on two threads can be no faster than its plain-write pass.

    python benchmarks/memory_ceiling.py [--shape 8192x1000] [--repeats 21]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from threadpoolctl import ThreadpoolController

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

import xentcy as xc  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="8192x1000")
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    N, C = map(int, args.shape.split("x"))
    A, y, G = bench.make_data(N, C, np.float32)
    halves = (slice(0, N // 2), slice(N // 2, N))
    pool = ThreadPoolExecutor(2)

    def two(f):
        return lambda: list(pool.map(f, halves))

    openmp = ThreadpoolController().select(user_api="openmp")

    def xentcy(threads):
        def run():
            with openmp.limit(limits=threads):
                xc.loss_and_grad(A, y, out=G)

        return run

    # (name, bytes moved per call in units of A, function)
    cases = [
        ("np.max", 1, lambda: np.max(A)),
        ("np.max, 2 threads", 1, two(lambda s: np.max(A[s]))),
        ("np.copyto", 2, lambda: np.copyto(G, A)),
        ("np.copyto, 2 threads", 2, two(lambda s: np.copyto(G[s], A[s]))),
        ("np.multiply", 3, lambda: np.multiply(A, 1.0, out=G)),
        ("np.multiply, 2 threads", 3, two(lambda s: np.multiply(A[s], 1.0, out=G[s]))),
        ("xentcy loss_and_grad", 3, xentcy(1)),
        ("xentcy loss_and_grad, 2 threads", 3, xentcy(2)),
    ]
    times: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    for _, _, f in cases:
        f()
    for _ in range(args.repeats):
        for name, _, f in cases:
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    print(f"(N, C) = ({N}, {C}), float32, A = {A.nbytes / 1e6:.0f} MB; median and best of {args.repeats}")
    print("GB/s counts A's bytes once per read or write, and a plain write's read of G too\n")
    print("| pass | median ms | best ms | GB/s (median) |")
    print("| --- | ---: | ---: | ---: |")
    for name, units, _ in cases:
        med, best = statistics.median(times[name]), min(times[name])
        print(f"| {name} | {med * 1e3:.2f} | {best * 1e3:.2f} | {units * A.nbytes / med / 1e9:.1f} |")


if __name__ == "__main__":
    main()
