"""evaluate(..., device="cuda") on a lent GPU (scripts/gpu_check.sh; not yet run on hardware).

Checks that streaming a memmap through pinned buffers, a copy stream and events gives the CPU
core's figures (float32 rounding), and times it against the bare host-to-device copy of the
same bytes from pinned memory: the pipeline is copy-bound when the ratio is near 1.

    python benchmarks/bench_eval_gpu.py [--gib 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import cupy
import numpy as np

import xentcy as xc


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gib", type=float, default=2.0)
    parser.add_argument("--classes", type=int, default=32000)
    parser.add_argument("--batch-size", type=int, default=8192)
    args = parser.parse_args()
    C, batch = args.classes, args.batch_size
    rows = int(args.gib * (1 << 30)) // (C * 4)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "logits.npy")
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, C))
        rng = np.random.default_rng(0)
        for i in range(0, rows, 8192):
            mm[i : i + 8192] = rng.standard_normal((min(8192, rows - i), C), dtype=np.float32)
        mm.flush()
        y = rng.integers(0, C, rows)
        y[::17] = -100
        mm = np.load(path, mmap_mode="r")
        np.asarray(mm).sum()  # into the page cache
        cpu = xc.evaluate(mm, y, batch_size=batch)
        t = time.perf_counter()
        gpu = xc.evaluate(mm, y, batch_size=batch, device="cuda")
        t_eval = time.perf_counter() - t
        assert gpu.count == cpu.count, (gpu, cpu)
        assert abs(gpu.loss - cpu.loss) <= 1e-5 * abs(cpu.loss), (gpu.loss, cpu.loss)
        assert abs(gpu.entropy - cpu.entropy) <= 1e-5 * abs(cpu.entropy), (gpu.entropy, cpu.entropy)
        assert all(abs(gpu.correct[k] - cpu.correct[k]) <= 2 for k in cpu.correct), (gpu.correct, cpu.correct)
        # the floor: the same bytes, pinned host to device, one batch buffer reused
        nbytes = batch * C * 4
        pinned = np.frombuffer(cupy.cuda.alloc_pinned_memory(nbytes), np.float32, batch * C)
        dev = cupy.empty(batch * C, np.float32)
        cupy.cuda.get_current_stream().synchronize()
        t = time.perf_counter()
        for i in range(0, rows, batch):
            n = min(batch, rows - i) * C
            dev[:n].set(pinned[:n])
        cupy.cuda.get_current_stream().synchronize()
        t_copy = time.perf_counter() - t
    gib = rows * C * 4 / (1 << 30)
    print(f"evaluate(memmap, device='cuda'): {gib:.2f} GiB in {t_eval:.2f} s ({gib / t_eval:.2f} GiB/s); "
          f"bare pinned H2D copy {t_copy:.2f} s ({gib / t_copy:.2f} GiB/s); ratio {t_eval / t_copy:.2f}")
    print(cpu)
    print(gpu)


if __name__ == "__main__":
    main()
