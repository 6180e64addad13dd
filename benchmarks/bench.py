"""Softmax cross-entropy, forward and gradient, on the CPU: xentcy against its peers.

Every method computes the loss and its gradient of the same float32 logits
(standard normal times 3) and class-index targets; each is timed alternately
with the floor, ``np.copyto(G, A)`` into a preallocated buffer (a fused
loss-and-gradient must at least read A and write G), median of ``--repeats``
runs. Forward-only rows are compared with ``np.max(A)``, a read-only pass.

    python benchmarks/bench.py                # the full run (a few minutes on 2 cores)
    python benchmarks/bench.py --quick        # smaller shapes, fewer repeats
    python benchmarks/bench.py --threads 1 --shapes 8192x1000

Prints a table (ms, GB/s of logits read plus gradient written, ratio to the
floor), and writes ``bench.json`` and ``bench.png`` under ``--out``. A
benchmark, not a test: nothing here fails on timing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SHAPES = ((2048, 32000), (8192, 1000), (65536, 10))
QUICK_SHAPES = ((512, 32000), (4096, 1000), (32768, 10))
HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------- timing


def timed_pair(f: Callable[[], Any], floor: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Medians (seconds) of f and floor, run alternately after one warm-up each."""
    f()
    floor()
    tf, tc = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        tf.append(time.perf_counter() - t)
        t = time.perf_counter()
        floor()
        tc.append(time.perf_counter() - t)
    return statistics.median(tf), statistics.median(tc)


class Progress:
    """tqdm where it is installed, else a one-line counter on stderr."""

    def __init__(self, total: int) -> None:
        try:
            from tqdm import tqdm

            self.bar: Any = tqdm(total=total, unit="case", file=sys.stderr, leave=False)
        except ImportError:
            self.bar, self.done, self.total = None, 0, total

    def step(self, label: str) -> None:
        if self.bar is not None:
            self.bar.set_description(label[:48])
            self.bar.update()
        else:
            self.done += 1
            print(f"\r[{self.done}/{self.total}] {label[:60]:60}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            print(file=sys.stderr)


# ---------------------------------------------------------------- methods
# Each maker takes (A, y, G, threads) and returns a callable computing the
# mean loss and its gradient (G where the method can write into it), or None
# where the method is not installed.


def numpy_plain(A: np.ndarray, y: np.ndarray, G: np.ndarray, threads: int) -> Callable[[], Any]:
    rows = np.arange(A.shape[0])

    def run() -> Any:
        m = A.max(axis=1, keepdims=True)
        np.subtract(A, m, out=G)
        np.exp(G, out=G)
        s = G.sum(axis=1, keepdims=True)
        loss = np.mean(m[:, 0] - A[rows, y] + np.log(s[:, 0]))
        np.divide(G, s, out=G)
        G[rows, y] -= 1
        np.divide(G, A.shape[0], out=G)
        return loss

    return run


def scipy_log_softmax(A: np.ndarray, y: np.ndarray, G: np.ndarray, threads: int) -> Callable[[], Any] | None:
    try:
        from scipy.special import log_softmax
    except ImportError:
        return None
    rows = np.arange(A.shape[0])

    def run() -> Any:
        logp = log_softmax(A, axis=1)
        loss = -np.mean(logp[rows, y])
        np.exp(logp, out=G)
        G[rows, y] -= 1
        np.divide(G, A.shape[0], out=G)
        return loss

    return run


def _torch_training(loss_name: str) -> Callable[..., Callable[[], Any] | None]:
    """Forward + backward() of a torch loss ('F': torch's own, 'xt': xentcy.torch's)."""

    def make(A: np.ndarray, y: np.ndarray, G: np.ndarray, threads: int) -> Callable[[], Any] | None:
        try:
            import torch
            import torch.nn.functional as F

            import xentcy.torch as xt
        except ImportError:
            return None
        loss_fn = F.cross_entropy if loss_name == "F" else xt.cross_entropy
        x = torch.from_numpy(A).requires_grad_(True)
        t = torch.from_numpy(y)

        def run() -> Any:
            torch.set_num_threads(threads)
            x.grad = None
            loss = loss_fn(x, t)
            loss.backward()
            return loss

        return run

    return make


def xentcy_on_torch_tensors(
    A: np.ndarray, y: np.ndarray, G: np.ndarray, threads: int
) -> Callable[[], Any] | None:
    """xentcy's plain loss_and_grad on torch CPU tensors of the same memory (DLPack routing)."""
    try:
        import torch
    except ImportError:
        return None
    import xentcy as xc

    At, yt, Gt = torch.from_numpy(A), torch.from_numpy(y), torch.from_numpy(G)
    return lambda: xc.loss_and_grad(At, yt, out=Gt)


def sklearn_half_multinomial(
    A: np.ndarray, y: np.ndarray, G: np.ndarray, threads: int
) -> Callable[[], Any] | None:
    try:
        from sklearn._loss.loss import HalfMultinomialLoss
    except ImportError:
        return None
    loss_fn = HalfMultinomialLoss(n_classes=A.shape[1])
    y_float = y.astype(A.dtype)
    loss_out = np.empty(A.shape[0], A.dtype)

    def run() -> Any:
        loss_fn.loss_gradient(y_float, A, loss_out=loss_out, gradient_out=G, n_threads=threads)
        return loss_out.mean()

    return run


def xentcy_fused(
    A: np.ndarray, y: np.ndarray, G: np.ndarray, threads: int, **kwargs: Any
) -> Callable[[], Any]:
    import xentcy as xc

    return lambda: xc.loss_and_grad(A, y, out=G, **kwargs)


def load_scalar_core(path: str) -> Any:
    """The pre-SIMD Cython core (a saved build of xentcy/_cpu/_core), as a module."""
    spec = importlib.util.spec_from_file_location("xentcy._cpu._core", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def xentcy_with_core(core: Any) -> Callable[..., Callable[[], Any]]:
    """xentcy_fused run through another build of the core (the 'before' of a change)."""
    import xentcy._cpu as cpu

    def make(A: np.ndarray, y: np.ndarray, G: np.ndarray, threads: int) -> Callable[[], Any]:
        fused = xentcy_fused(A, y, G, threads)

        def run() -> Any:
            current, cpu._core = cpu._core, core
            try:
                return fused()
            finally:
                cpu._core = current

        return run

    return make


PEERS: dict[str, Callable[..., Any]] = {
    "numpy (plain)": numpy_plain,
    "scipy log_softmax": scipy_log_softmax,
    "torch F.cross_entropy": _torch_training("F"),
    "xentcy on torch tensors": xentcy_on_torch_tensors,
    "xentcy.torch fwd+bwd": _torch_training("xt"),
    "sklearn HalfMultinomialLoss": sklearn_half_multinomial,
}


# ---------------------------------------------------------------- JAX, in a subprocess
# XLA fixes its thread pool when it starts, so each thread count gets its own
# process, pinned to that many CPUs.

JAX_FLAGS_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def jax_worker(shapes: list[tuple[int, int]], repeats: int) -> None:
    try:
        import jax
        import jax.numpy as jnp
        import optax

        import xentcy as xc
        import xentcy.jax as xj
    except ImportError as err:
        print(json.dumps({"error": str(err)}))
        return
    from xentcy._cpu import _core

    _core.set_max_threads(len(os.sched_getaffinity(0)))
    results = []

    @jax.jit
    def loss_and_grad(a: Any, y: Any) -> Any:
        return jax.value_and_grad(lambda a: optax.softmax_cross_entropy_with_integer_labels(a, y).mean())(a)

    xentcy_jit = jax.jit(jax.value_and_grad(xj.cross_entropy))
    methods = {
        "JAX/optax jit": loss_and_grad,
        "xentcy.jax jit value_and_grad": xentcy_jit,
        "xentcy on JAX arrays": xc.loss_and_grad,
    }
    for N, C in shapes:
        A, y, G = make_data(N, C, np.float32)
        a, t = jnp.asarray(A), jnp.asarray(y.astype(np.int32))
        for name, f in methods.items():
            t_jax, t_copy = timed_pair(
                lambda a=a, t=t, f=f: jax.block_until_ready(f(a, t)),
                lambda G=G, A=A: np.copyto(G, A),
                repeats,
            )
            results.append({"method": name, "N": N, "C": C, "ms": t_jax * 1e3, "copy_ms": t_copy * 1e3})
    print(json.dumps({"results": results, "version": jax.__version__}))


def run_jax(shapes: list[tuple[int, int]], threads: int, repeats: int) -> dict[str, Any]:
    env = dict(os.environ)
    if threads == 1:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + JAX_FLAGS_ONE_THREAD).strip()
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    code = (
        f"import os, sys; os.sched_setaffinity(0, {cpus!r}); sys.path.insert(0, {str(HERE)!r}); "
        f"import bench; bench.jax_worker({shapes!r}, {repeats})"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": out.stderr.strip()[-500:]}


# ---------------------------------------------------------------- the run


def make_data(N: int, C: int, dtype: Any, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    A = (rng.standard_normal((N, C), dtype=np.float32) * 3).astype(dtype)
    y = rng.integers(0, C, N)
    return A, y, np.empty_like(A)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("xentcy", "torch", "sklearn", "scipy", "jax", "optax"):
        try:
            out[name] = __import__(name).__version__
        except (ImportError, AttributeError):
            pass
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes, 5 repeats")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--shapes", help="comma-separated NxC (default 2048x32000,8192x1000,65536x10)")
    parser.add_argument("--repeats", type=int, help="timed runs per method (default 9; 5 with --quick)")
    parser.add_argument("--no-peers", action="store_true", help="xentcy and the floors only")
    parser.add_argument("--scalar-core", help="a saved build of the pre-SIMD _core .so to time as 'before'")
    parser.add_argument("--out", default=str(HERE / "results"), help="where bench.json and bench.png go")
    args = parser.parse_args(argv)

    from threadpoolctl import threadpool_limits

    import xentcy as xc
    from xentcy._cpu import _core

    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.shapes:
        shapes = tuple(tuple(int(n) for n in s.lower().split("x")) for s in args.shapes.split(","))
    repeats = args.repeats or (5 if args.quick else 9)
    thread_counts = [int(t) for t in args.threads.split(",")]

    methods: dict[str, Callable[..., Any]] = {"xentcy": xentcy_fused}
    if args.scalar_core:
        methods["xentcy, scalar core (before)"] = xentcy_with_core(load_scalar_core(args.scalar_core))
    if not args.no_peers:
        methods.update(PEERS)
    variants: dict[str, dict[str, Any]] = {
        "xentcy float64": {"dtype": np.float64},
        "xentcy probability targets": {"probabilities": True},
        "xentcy weight+smoothing+ignore": {
            "kwargs": {"label_smoothing": 0.1, "ignore_index": -1},
            "weight": True,
            "ignored": 0.1,
        },
        "xentcy forward only (vs np.max)": {"forward": True},
    }
    n_cases = len(thread_counts) * len(shapes) * (len(methods) + len(variants))
    progress = Progress(n_cases)
    records: list[dict[str, Any]] = []

    def record(method: str, N: int, C: int, dtype: Any, threads: int, t: float, t_floor: float,
               floor: str, bytes_moved: int) -> None:
        records.append({
            "method": method, "N": N, "C": C, "dtype": np.dtype(dtype).name, "threads": threads,
            "ms": t * 1e3, "floor_ms": t_floor * 1e3, "floor": floor,
            "GB_per_s": bytes_moved / t / 1e9, "floor_GB_per_s": bytes_moved / t_floor / 1e9,
            "ratio": t / t_floor,
        })

    for threads in thread_counts:
        with threadpool_limits(threads):
            for N, C in shapes:
                A, y, G = make_data(N, C, np.float32)
                copy = lambda A=A, G=G: np.copyto(G, A)  # noqa: E731
                for name, make in methods.items():
                    progress.step(f"{name} {N}x{C} t{threads}")
                    f = make(A, y, G, threads)
                    if f is None:
                        continue
                    t, tc = timed_pair(f, copy, repeats)
                    record(name, N, C, A.dtype, threads, t, tc, "copy", 2 * A.nbytes)
                for name, v in variants.items():
                    progress.step(f"{name} {N}x{C} t{threads}")
                    dtype = v.get("dtype", np.float32)
                    A2, y2, G2 = (A, y, G) if dtype == np.float32 else make_data(N, C, dtype)
                    kwargs = dict(v.get("kwargs", {}))
                    target = y2
                    if v.get("probabilities"):
                        target = np.zeros_like(A2)
                        target[np.arange(N), y2] = 1
                    if v.get("weight"):
                        kwargs["weight"] = np.random.default_rng(1).uniform(0.5, 2, C).astype(dtype)
                    if v.get("ignored"):
                        target = y2.copy()
                        target[np.random.default_rng(2).random(N) < v["ignored"]] = -1
                    if v.get("forward"):
                        f = lambda A2=A2, target=target: xc.cross_entropy(A2, target)  # noqa: E731
                        t, tf = timed_pair(f, lambda A2=A2: np.max(A2), repeats)
                        record(name, N, C, dtype, threads, t, tf, "max", A2.nbytes)
                    else:
                        f = xentcy_fused(A2, target, G2, threads, **kwargs)
                        t, tc = timed_pair(f, lambda A2=A2, G2=G2: np.copyto(G2, A2), repeats)
                        record(name, N, C, dtype, threads, t, tc, "copy", 2 * A2.nbytes)
                del A, y, G
    progress.close()

    if not args.no_peers:
        for threads in thread_counts:
            print(f"JAX, {threads} thread(s), in a subprocess ...", file=sys.stderr)
            jax_out = run_jax(list(shapes), threads, repeats)
            for r in jax_out.get("results", []):
                nbytes = 2 * r["N"] * r["C"] * 4
                record(r["method"], r["N"], r["C"], np.float32, threads, r["ms"] / 1e3,
                       r["copy_ms"] / 1e3, "copy", nbytes)
            if "error" in jax_out:
                print(f"JAX skipped: {jax_out['error']}", file=sys.stderr)

    meta = {
        "cpu": cpu_name(), "cores": os.cpu_count(), "isa": _core.isa(), "versions": versions(),
        "repeats": repeats, "timestamp": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(table(records, meta))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps({"meta": meta, "results": records}, indent=1) + "\n")
    plot(records, meta, out / "bench.png")
    print(f"wrote {out / 'bench.json'} and {out / 'bench.png'}", file=sys.stderr)


def table(records: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"CPU: {meta['cpu']} ({meta['cores']} cores), xentcy kernels: {meta['isa']}",
        "float32 unless named; class-index targets; mean loss + gradient; "
        "ratio = time / np.copyto(G, A) (forward only: / np.max(A))",
        "",
        "| method | threads | (N, C) | ms | GB/s | ratio |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for threads in sorted({r["threads"] for r in records}):
        for r in records:
            if r["threads"] != threads:
                continue
            lines.append(
                f"| {r['method']} | {threads} | ({r['N']}, {r['C']}) | {r['ms']:.2f} | "
                f"{r['GB_per_s']:.1f} | {r['ratio']:.2f}x |"
            )
    floors = {}
    for r in records:
        if r["floor"] == "copy" and r["dtype"] == "float32":
            floors.setdefault((r["threads"], r["N"], r["C"]), []).append(r["floor_ms"])
    lines += [
        "",
        "| floor np.copyto(G, A), float32 | threads | (N, C) | ms | GB/s |",
        "| --- | ---: | --- | ---: | ---: |",
    ]
    for (threads, N, C), ms in sorted(floors.items()):
        med = statistics.median(ms)
        lines.append(f"| copy | {threads} | ({N}, {C}) | {med:.3f} | {2 * N * C * 4 / med / 1e6:.1f} |")
    return "\n".join(lines)


def plot(records: list[dict[str, Any]], meta: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return
    thread_counts = sorted({r["threads"] for r in records})
    fig, axes = plt.subplots(1, len(thread_counts), figsize=(6.5 * len(thread_counts), 4.8), squeeze=False)
    for ax, threads in zip(axes[0], thread_counts, strict=True):
        rows = [r for r in records if r["threads"] == threads and r["dtype"] == "float32"
                and r["floor"] == "copy" and not r["method"].startswith("xentcy ")]
        floor: dict[int, list[float]] = {}
        for r in rows:
            floor.setdefault(r["C"], []).append(r["floor_GB_per_s"])
        Cs = sorted(floor)
        ax.plot(Cs, [statistics.median(floor[C]) for C in Cs], "k--", lw=2, label="floor: np.copyto(G, A)")
        for method in dict.fromkeys(r["method"] for r in rows):
            pts = sorted((r["C"], r["GB_per_s"]) for r in rows if r["method"] == method)
            style = {"lw": 2.5, "marker": "o"} if method == "xentcy" else {"lw": 1.2, "marker": "."}
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=method, **style)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("classes C (N x C logits, float32)")
        ax.set_ylabel("GB/s (logits read + gradient written)")
        ax.set_title(f"loss + gradient, {threads} thread{'s' if threads > 1 else ''}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{meta['cpu']}: softmax cross-entropy, forward + gradient", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
