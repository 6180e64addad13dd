"""GPU benchmark of the CuPy backend against torch and the memory floors (issue 4).

One table: for each shape and dtype, xentcy ``loss_and_grad`` (with ``out=``),
xentcy forward-only ``cross_entropy``, torch ``F.cross_entropy`` forward +
backward and forward alone, a device-to-device copy of the logits and a
read-only sum over them. Times are CUDA-event medians of many runs after a
warm-up, on inputs rotated among several copies so that L2 does not flatter.
GB/s counts the bytes that must move: read + write of N x C for the gradient
variants and the copy, one read for the forward variants and the sum.
Each variant is checked against torch once before it is timed. Writes the
table and JSON to $OUT when set, else to benchmarks/results/.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

import cupy
import numpy as np
import torch
import torch.nn.functional as F

import xentcy as xc

CASES = [
    ((8192, 1000), "float32"),
    ((8192, 32000), "float32"),
    ((16384, 131072), "bfloat16"),
    ((16384, 131072), "float16"),
    ((65536, 10), "float32"),
]
WARMUP, REPEATS = 5, 30
ROTATE_BYTES = 1 << 28  # keep at least this much logits in rotation (L2 is 50-60 MB)


def cupy_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def time_ms(fn, inputs) -> float:
    """Median milliseconds of fn(x) over CUDA events, x rotating through inputs."""
    stream = cupy.cuda.get_current_stream()
    for i in range(WARMUP):
        fn(inputs[i % len(inputs)])
    times = []
    for i in range(REPEATS):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record(stream)
        fn(inputs[i % len(inputs)])
        stop.record(stream)
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop))
    return statistics.median(times)


def rel_err(got, want) -> float:
    got = torch.as_tensor(got, device="cuda").double()
    want = want.double()
    return float((got - want).norm() / want.norm().clamp_min(1e-300))


def bench(shape, dtype_name):
    n, c = shape
    dtype = cupy_dtype(dtype_name)
    tdtype = getattr(torch, dtype_name)
    nbytes = n * c * dtype.itemsize
    copies = max(2, min(8, -(-ROTATE_BYTES // nbytes)))
    free, _ = cupy.cuda.runtime.memGetInfo()
    copies = max(2, min(copies, int(free * 0.5 // nbytes) - 4))
    rng = cupy.random.default_rng(0)
    logits = [(rng.standard_normal(shape, dtype=cupy.float32) * 2).astype(dtype) for _ in range(copies)]
    y = rng.integers(0, c, n, dtype=cupy.int64)
    out = cupy.empty(shape, dtype)
    torch_logits = [
        torch.as_tensor(a.view(cupy.int16) if dtype.itemsize == 2 else a, device="cuda") for a in logits
    ]
    if dtype.itemsize == 2:
        torch_logits = [t.view(tdtype) for t in torch_logits]
    ty = torch.as_tensor(y, device="cuda")

    # correctness once, against torch in float32 on the same values
    ref_in = torch_logits[0].float().requires_grad_()
    ref_loss = F.cross_entropy(ref_in, ty)
    ref_loss.backward()
    loss, grad = xc.loss_and_grad(logits[0], y, out=out)
    tol = 1e-5 if dtype_name == "float32" else 2e-2
    errors = {
        "loss": rel_err(cupy.asarray(loss, dtype=cupy.float64), ref_loss.detach()),
        "grad": rel_err(grad.astype(cupy.float32), ref_in.grad),
        "forward": rel_err(
            cupy.asarray(xc.cross_entropy(logits[0], y), dtype=cupy.float64), ref_loss.detach()
        ),
    }
    for name, err in errors.items():
        if not err < tol:
            raise AssertionError(f"{shape} {dtype_name}: xentcy {name} differs from torch by {err:.2e}")
    del ref_in, ref_loss

    def torch_fwd_bwd(t):
        t = t.detach().requires_grad_()
        F.cross_entropy(t, ty).backward()

    def torch_fwd(t):
        with torch.no_grad():
            F.cross_entropy(t, ty)

    copy_out = cupy.empty(shape, dtype)
    rows = {
        "xentcy loss_and_grad": (time_ms(lambda a: xc.loss_and_grad(a, y, out=out), logits), 2),
        "xentcy forward": (time_ms(lambda a: xc.cross_entropy(a, y), logits), 1),
        "torch fwd+bwd": (time_ms(torch_fwd_bwd, torch_logits), 2),
        "torch forward": (time_ms(torch_fwd, torch_logits), 1),
        "copy (floor)": (time_ms(lambda a: cupy.copyto(copy_out, a), logits), 2),
        "sum (floor)": (time_ms(lambda a: a.sum(dtype=cupy.float32), logits), 1),
    }
    return {name: {"ms": ms, "GB/s": passes * nbytes / ms / 1e6} for name, (ms, passes) in rows.items()} | {
        "errors vs torch": errors,
        "copies rotated": copies,
    }


def main() -> int:
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    device = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    results = {"device": device, "cupy": cupy.__version__, "torch": torch.__version__, "cases": {}}
    lines = []
    header = None
    for shape, dtype_name in CASES:
        key = f"{shape[0]}x{shape[1]} {dtype_name}"
        try:
            r = bench(shape, dtype_name)
        except Exception as exc:  # one failing case must not hide the others
            results["cases"][key] = {"error": f"{type(exc).__name__}: {exc}"}
            lines.append(f"{key:<24}  FAILED: {type(exc).__name__}: {exc}")
            print(lines[-1], flush=True)
            continue
        finally:
            cupy.get_default_memory_pool().free_all_blocks()
            torch.cuda.empty_cache()
        results["cases"][key] = r
        names = [k for k in r if isinstance(r[k], dict) and "ms" in r[k]]
        if header is None:
            header = f"{'shape':<24}" + "".join(f"{n:>28}" for n in names)
            lines[:0] = [
                f"device: {device}",
                "ms and GB/s (bytes: read + write of N x C for grad and copy, read for forward and sum)",
                header,
            ]
        lines.append(
            f"{key:<24}" + "".join(f"{r[n]['ms']:9.3f} ms {r[n]['GB/s']:6.0f} GB/s".rjust(28) for n in names)
        )
    table = "\n".join(lines)
    print(table)
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(__file__).with_name("results")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_gpu.json").write_text(json.dumps(results, indent=2))
    (out_dir / "bench_gpu.txt").write_text(table + "\n")
    return 1 if any("error" in r for r in results["cases"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
