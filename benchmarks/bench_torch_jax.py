"""xentcy for PyTorch and JAX users (issue 14): their arrays on xentcy's kernels, and the
training losses against the frameworks' own. One thread, float32, class indices, mean loss;
medians of REPEATS runs after a warm-up (compile time excluded).

    python benchmarks/bench_torch_jax.py [--repeats 7] [--no-thp]

Prints three tables:

1. ``xc.loss_and_grad`` on NumPy arrays, on the same data as torch CPU tensors and as JAX
   CPU arrays (the floor is the NumPy call: the other two add only their routing);
2. ``xentcy.torch.cross_entropy`` forward + ``backward()`` against
   ``torch.nn.functional.cross_entropy``, eager and under ``torch.compile`` (both compiled
   the same way), run twice: as torch starts, and with ``THP_MEM_ALLOC_ENABLE=1`` (torch's
   CPU allocator asks for transparent huge pages; on these VMs the page faults of a fresh
   N x C tensor cost more than the loss), each in a fresh process;
3. ``jax.jit(jax.grad(xentcy.jax.cross_entropy))`` against ``optax`` under ``jax.jit``.

A benchmark, not a test: nothing here fails on timing. JAX runs in a subprocess pinned to
one thread (XLA fixes its thread pool when it starts).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

SHAPES = ((2048, 32000), (8192, 1000), (65536, 10))
JAX_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def data(n: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, c), dtype=np.float32) * 3, rng.integers(0, c, n)


def one_thread() -> None:
    from xentcy._cpu import _core

    _core.set_max_threads(1)


# ---------------------------------------------------------------- torch (one process each)


def torch_rows(repeats: int) -> list[dict[str, Any]]:
    import torch
    import torch.nn.functional as F

    import xentcy as xc
    import xentcy.torch as xt

    torch.set_num_threads(1)
    one_thread()
    rows = []
    for n, c in SHAPES:
        A, y = data(n, c)
        At, yt = torch.from_numpy(A), torch.from_numpy(y)

        def train(loss_fn: Callable[..., Any], At: Any = At, yt: Any = yt) -> Callable[[], Any]:
            def step() -> None:
                a = At.detach().requires_grad_()
                loss_fn(a, yt).backward()

            return step

        compiled_ours = torch.compile(xt.cross_entropy, fullgraph=True)
        compiled_theirs = torch.compile(F.cross_entropy, fullgraph=True)
        rows.append({
            "N": n, "C": c,
            "numpy": median_ms(lambda A=A, y=y: xc.loss_and_grad(A, y), repeats),
            "torch_tensors": median_ms(lambda At=At, yt=yt: xc.loss_and_grad(At, yt), repeats),
            "xt": median_ms(train(xt.cross_entropy), repeats),
            "F": median_ms(train(F.cross_entropy), repeats),
            "xt_compiled": median_ms(train(compiled_ours), repeats),
            "F_compiled": median_ms(train(compiled_theirs), repeats),
        })
        torch._dynamo.reset()
    return rows


# ---------------------------------------------------------------- JAX


def jax_rows(repeats: int) -> list[dict[str, Any]]:
    import jax
    import jax.numpy as jnp
    import optax

    import xentcy as xc
    import xentcy.jax as xj

    one_thread()
    ours = jax.jit(jax.grad(xj.cross_entropy))
    theirs = jax.jit(jax.grad(lambda a, t: optax.softmax_cross_entropy_with_integer_labels(a, t).mean()))
    rows = []
    for n, c in SHAPES:
        A, y = data(n, c)
        a, t = jnp.asarray(A), jnp.asarray(y.astype(np.int32))
        rows.append({
            "N": n, "C": c,
            "numpy": median_ms(lambda A=A, y=y: xc.loss_and_grad(A, y), repeats),
            "jax_arrays": median_ms(lambda a=a, t=t: jax.block_until_ready(xc.loss_and_grad(a, t)), repeats),
            "xj_grad": median_ms(lambda a=a, t=t: ours(a, t).block_until_ready(), repeats),
            "optax_grad": median_ms(lambda a=a, t=t: theirs(a, t).block_until_ready(), repeats),
        })
    return rows


def in_subprocess(worker: str, repeats: int, env: dict[str, str]) -> list[dict[str, Any]]:
    code = (
        "import json, sys; "
        f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
        f"import bench_torch_jax as b; print(json.dumps(b.{worker}({repeats})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(f"{worker} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- tables


def shape(r: dict[str, Any]) -> str:
    return f"({r['N']}, {r['C']})"


def routing_table(torch_rows: list[dict[str, Any]], jax_rows: list[dict[str, Any]]) -> str:
    lines = [
        "| (N, C) | NumPy ms | torch CPU ms | / NumPy | JAX CPU ms | / NumPy |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for t, j in zip(torch_rows, jax_rows, strict=True):
        lines.append(
            f"| {shape(t)} | {t['numpy']:.1f} | {t['torch_tensors']:.1f} | "
            f"{t['torch_tensors'] / t['numpy']:.2f} | {j['jax_arrays']:.1f} | "
            f"{j['jax_arrays'] / j['numpy']:.2f} |"
        )
    return "\n".join(lines)


def torch_table(rows: list[dict[str, Any]], label: str) -> str:
    lines = [
        f"| {label} (N, C) | xt eager ms | F eager ms | speed-up "
        "| xt compiled ms | F compiled ms | speed-up |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {shape(r)} | {r['xt']:.1f} | {r['F']:.1f} | {r['F'] / r['xt']:.1f}x | "
            f"{r['xt_compiled']:.1f} | {r['F_compiled']:.1f} | {r['F_compiled'] / r['xt_compiled']:.1f}x |"
        )
    return "\n".join(lines)


def jax_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| (N, C) | xentcy.jax grad, jit ms | optax grad, jit ms | speed-up |",
        "| --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {shape(r)} | {r['xj_grad']:.1f} | {r['optax_grad']:.1f} | "
            f"{r['optax_grad'] / r['xj_grad']:.1f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-thp", action="store_true", help="skip the THP_MEM_ALLOC_ENABLE=1 run")
    args = parser.parse_args(argv)
    torch_plain = in_subprocess("torch_rows", args.repeats, {"THP_MEM_ALLOC_ENABLE": "0"})
    torch_thp = None if args.no_thp else in_subprocess(
        "torch_rows", args.repeats, {"THP_MEM_ALLOC_ENABLE": "1"}
    )
    jax_out = in_subprocess("jax_rows", args.repeats, {"XLA_FLAGS": JAX_ONE_THREAD})
    print("One thread, float32, class indices, mean loss; medians of", args.repeats, "runs.\n")
    print("xc.loss_and_grad on the same data as NumPy arrays, torch CPU tensors, JAX CPU arrays\n")
    print(routing_table(torch_plain, jax_out), "\n")
    print("Forward + backward(): xentcy.torch.cross_entropy (xt) against F.cross_entropy (F)\n")
    print(torch_table(torch_plain, "torch's allocator"), "\n")
    if torch_thp is not None:
        print(torch_table(torch_thp, "THP_MEM_ALLOC_ENABLE=1"), "\n")
    print("jax.grad under jax.jit\n")
    print(jax_table(jax_out))


if __name__ == "__main__":
    main()
