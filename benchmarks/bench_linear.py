"""A language model's last layer and loss (issue 16): xentcy.linear_loss_and_grad against the
three matmuls alone and PyTorch's F.linear_cross_entropy, time and peak memory.

    python benchmarks/bench_linear.py [--n 8192] [--h 1024] [--v 32000] [--threads 2] [--repeats 3]

Each method runs in a fresh process (so that one's allocations do not hide another's), on
float32 data of the same seed, with the same thread count for BLAS, xentcy's OpenMP and torch.
Peak extra memory: the process's peak RSS (VmHWM, reset before the call) minus its RSS with
the inputs in memory and minus the outputs' size (d_hidden, d_classifier), from /proc: what
the method holds beyond its inputs and outputs (the logits, their gradient, temporaries),
after a call on a tiny problem has loaded every library and BLAS's thread buffers. Times:
medians after one warm-up. A benchmark, not a test: nothing fails on timing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

METHODS = (
    "matmuls",
    "xentcy",
    "xentcy.torch.linear_cross_entropy",
    "torch F.linear_cross_entropy",
    "torch F.linear + F.cross_entropy",
)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(field)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def worker(method: str, n: int, h: int, v: int, threads: int, repeats: int) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((n, h), dtype=np.float32)
    classifier = rng.standard_normal((v, h), dtype=np.float32) / np.float32(np.sqrt(h))
    target = rng.integers(0, v, n)
    target[::10] = -100  # every tenth token ignored, as padding
    outputs_kib = (hidden.nbytes + classifier.nbytes) // 1024  # d_hidden and d_classifier
    if method == "matmuls":  # (which write into outputs that exist already)
        d_h, d_w = np.zeros_like(hidden), np.zeros_like(classifier)
        outputs_kib = 0
    if method.startswith("torch") or method.startswith("xentcy.torch"):
        import torch
        import torch.nn.functional as F

        import xentcy.torch as xt

        torch.set_num_threads(threads)
        ht, wt, yt = torch.from_numpy(hidden), torch.from_numpy(classifier), torch.from_numpy(target)
    from threadpoolctl import threadpool_limits

    import xentcy as xc

    limits = threadpool_limits(threads)

    def matmuls() -> None:
        logits = hidden @ classifier.T
        np.matmul(logits, classifier, out=d_h)
        np.matmul(logits.T, hidden, out=d_w)

    def ours() -> None:
        xc.linear_loss_and_grad(hidden, classifier, target)

    def ours_torch() -> None:
        a, b = ht.detach().requires_grad_(), wt.detach().requires_grad_()
        xt.linear_cross_entropy(a, b, yt).backward()

    def torch_fused() -> None:
        a, b = ht.detach().requires_grad_(), wt.detach().requires_grad_()
        F.linear_cross_entropy(a, b, yt, ignore_index=-100).backward()

    def torch_plain() -> None:
        a, b = ht.detach().requires_grad_(), wt.detach().requires_grad_()
        F.cross_entropy(F.linear(a, b), yt).backward()

    fn = {
        "matmuls": matmuls,
        "xentcy": ours,
        "xentcy.torch.linear_cross_entropy": ours_torch,
        "torch F.linear_cross_entropy": torch_fused,
        "torch F.linear + F.cross_entropy": torch_plain,
    }[method]
    if method != "matmuls":  # libraries and thread buffers loaded, on a tiny problem
        tiny = worker_inputs = (hidden[:4].copy(), classifier[:8].copy(), target[:4] % 8)
        if method == "xentcy":
            xc.linear_loss_and_grad(*tiny)
        else:
            a = torch.from_numpy(worker_inputs[0]).requires_grad_()
            b = torch.from_numpy(worker_inputs[1]).requires_grad_()
            F.cross_entropy(F.linear(a, b), torch.from_numpy(worker_inputs[2])).backward()
            xt.linear_cross_entropy(a, b, torch.from_numpy(worker_inputs[2])).backward()
    base = _rss_kib("VmRSS")
    _reset_peak()
    fn()  # the warm-up: its peak is the one measured (a fresh process)
    peak = _rss_kib("VmHWM") - base - outputs_kib
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    del limits
    return {"method": method, "s": statistics.median(times), "peak_extra_mib": peak / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--h", type=int, default=1024)
    parser.add_argument("--v", type=int, default=32000)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.h, args.v, args.threads, args.repeats)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    logits_mib = args.n * args.v * 4 / 2**20
    rows = []
    for method in METHODS:
        sizes = ["--n", str(args.n), "--h", str(args.h), "--v", str(args.v)]
        cmd = [sys.executable, __file__, "--worker", method, *sizes, "--threads", str(args.threads),
               "--repeats", str(args.repeats)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            print(f"{method}: failed\n{out.stderr[-1500:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = next((r["s"] for r in rows if r["method"] == "matmuls"), None)
    print(f"N = {args.n}, H = {args.h}, V = {args.v}, float32, {args.threads} threads; "
          f"the logits alone: {logits_mib:.0f} MiB; medians of {args.repeats}\n")  # fmt: skip
    print("| method | s | / matmuls | peak extra MiB | / logits |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        ratio = f"{r['s'] / base:.2f}" if base else ""
        print(f"| {r['method']} | {r['s']:.2f} | {ratio} | {r['peak_extra_mib']:.0f} | "
              f"{r['peak_extra_mib'] / logits_mib:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
