"""Batch evaluation (issue 13): xentcy.evaluate against forward-only cross_entropy and the peers'
usual loss + top-k + entropy, and the CLI on a .npy in the page cache.

    python benchmarks/bench_eval.py [--repeats 7] [--cli-gib 4] [--skip-cli] [--reference-only]

One thread (OMP_NUM_THREADS, torch.set_num_threads, XLA's flags are set before the imports),
float32, class-index targets; medians of alternating repeats; ratios to xentcy's forward pass.
The CLI part writes a file of --cli-gib GiB into the temporary directory, reads it once into
the page cache, then times ``python -m xentcy eval`` on it (1 and 2 threads) and samples the
process's RssAnon (anonymous resident memory: the file's own pages are file-backed and not
counted) every 5 ms from /proc/PID/status; its peak is compared with two batches + 200 MB.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import numpy as np  # noqa: E402

import xentcy as xc  # noqa: E402

N, C = 8192, 32000


def timed(fn, repeats):
    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def peers(A, y):
    """The usual way: loss, top-5 hits, top-1 hits, entropy, each its own pass."""
    out = {}

    def numpy_way():
        m = A.max(axis=1, keepdims=True)
        z = A - m
        lse = np.log(np.exp(z).sum(axis=1, keepdims=True))
        logp = z - lse
        loss = -logp[np.arange(N), y].mean()
        top5 = np.argpartition(-A, 5, axis=1)[:, :5]
        acc5 = (top5 == y[:, None]).any(axis=1).mean()
        acc1 = (A.argmax(axis=1) == y).mean()
        ent = -(np.exp(logp) * logp).sum(axis=1).mean()
        return loss, acc1, acc5, ent

    out["NumPy (log-softmax, argpartition, argmax, entropy)"] = numpy_way
    try:
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(1)
        At, yt = torch.from_numpy(A), torch.from_numpy(y)

        def torch_way():
            loss = F.cross_entropy(At, yt)
            acc5 = (At.topk(5).indices == yt[:, None]).any(1).float().mean()
            acc1 = (At.argmax(1) == yt).float().mean()
            ent = -(At.softmax(-1) * At.log_softmax(-1)).sum(-1).mean()
            return loss, acc1, acc5, ent

        out[f"torch {torch.__version__} (cross_entropy, topk, argmax, softmax entropy)"] = torch_way
    except ImportError:
        pass
    try:
        import jax
        import jax.numpy as jnp

        @jax.jit
        def jax_metrics(a, t):
            logp = jax.nn.log_softmax(a, axis=-1)
            loss = -jnp.take_along_axis(logp, t[:, None], axis=1).mean()
            top5 = jax.lax.top_k(a, 5)[1]
            acc5 = (top5 == t[:, None]).any(axis=1).mean()
            acc1 = (jnp.argmax(a, axis=1) == t).mean()
            ent = -(jnp.exp(logp) * logp).sum(axis=1).mean()
            return loss, acc1, acc5, ent

        Aj, yj = jnp.asarray(A), jnp.asarray(y)

        def jax_way():
            return jax.block_until_ready(jax_metrics(Aj, yj))

        out[f"JAX {jax.__version__} under jit (log_softmax, top_k, argmax, entropy)"] = jax_way
    except ImportError:
        pass
    return out


def in_memory(repeats):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((N, C), dtype=np.float32) * 3
    y = rng.integers(0, C, N)
    buf = np.empty_like(A)
    cases = {
        "xentcy.cross_entropy (forward only: the floor)": lambda: xc.cross_entropy(A, y),
        "xentcy.evaluate, top_k=(1, 5), entropy": lambda: xc.evaluate(A, y, top_k=(1, 5)),
        "a copy of the logits (np.copyto)": (lambda: np.copyto(buf, A)),
    }
    cases.update(peers(A, y))
    med = medians(cases, repeats)
    floor = med["xentcy.cross_entropy (forward only: the floor)"]
    ev = med["xentcy.evaluate, top_k=(1, 5), entropy"]
    print(f"In memory: ({N}, {C}) float32, one thread, medians of {repeats}\n")
    print("| what | ms | / forward | evaluate's speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for k, t in med.items():
        print(f"| {k} | {t * 1e3:.1f} | {t / floor:.2f} | {t / ev:.1f}x |")
    print()
    return A, y


def medians(cases, repeats):
    """The median time of each case, the cases alternating (a warm-up call each first)."""
    times = {k: [] for k in cases}
    for fn in cases.values():
        fn()
    for _ in range(repeats):
        for k, fn in cases.items():
            times[k] += timed(fn, 1)
    return {k: statistics.median(t) for k, t in times.items()}


def reference_logits(repeats, n=4096):
    """KL(p_ref || p) and top-1 agreement of two models' logits (B = A + 0.01 noise)."""
    rng = np.random.default_rng(1)
    A = rng.standard_normal((n, C), dtype=np.float32) * 3
    B = A + np.float32(0.01) * rng.standard_normal((n, C), dtype=np.float32)
    y = rng.integers(0, C, n)

    def two_log_softmaxes():
        # the usual formula, on xentcy's log_softmax, summed in float64
        lp, lq = xc.log_softmax(A, axis=1), xc.log_softmax(B, axis=1)
        q = np.exp(lq.astype(np.float64))
        kl = (q * (lq.astype(np.float64) - lp)).sum(axis=1).mean()
        return kl, (lp.argmax(1) == lq.argmax(1)).mean()

    import array_api_compat.numpy as xpn

    from xentcy._generic import compare_rows as generic_compare_rows

    cases = {
        "xentcy.cross_entropy on both (two forward passes: the floor)": lambda: (
            xc.cross_entropy(A, y),
            xc.cross_entropy(B, y),
        ),
        "xentcy.evaluate(A, None, reference=B) (the row-pair kernel)": lambda: xc.evaluate(
            A, None, reference=B
        ),
        "xentcy.evaluate(A, y, reference=B) (and loss, top-k, entropy)": lambda: xc.evaluate(
            A, y, reference=B
        ),
        "the array-API path on NumPy (float64, what CuPy/torch/JAX run)": lambda: generic_compare_rows(
            xpn, A, B, 1
        ),
        "two log-softmaxes, q (log q - log p) in float64": two_log_softmaxes,
    }
    try:
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(1)
        ta, tb = torch.from_numpy(A), torch.from_numpy(B)

        def torch_way():
            lp, lq = F.log_softmax(ta, -1), F.log_softmax(tb, -1)
            return F.kl_div(lp, lq, log_target=True, reduction="batchmean"), (
                lp.argmax(1) == lq.argmax(1)
            ).float().mean()

        cases[f"torch {torch.__version__} (log_softmax x2, kl_div, argmax)"] = torch_way
    except ImportError:
        pass
    med = medians(cases, repeats)
    floor = next(iter(med.values()))
    print(f"Reference logits: ({n}, {C}) float32 twice, one thread, medians of {repeats}\n")
    print("| what | ms | / two forward passes |")
    print("| --- | ---: | ---: |")
    for k, t in med.items():
        print(f"| {k} | {t * 1e3:.1f} | {t / floor:.2f} |")
    print()


def _sample_rss(pid, stop):
    peak = 0
    while stop.poll() is None:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            break
        time.sleep(0.005)
    return peak


def cli(gib, repeats):
    rows = int(gib * (1 << 30)) // (C * 4)
    batch = 4096
    with tempfile.TemporaryDirectory() as d:
        path, ypath = os.path.join(d, "logits.npy"), os.path.join(d, "labels.npy")
        rng = np.random.default_rng(1)
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, C))
        for i in range(0, rows, 8192):
            mm[i : i + 8192] = rng.standard_normal((min(8192, rows - i), C), dtype=np.float32)
        mm.flush()
        del mm
        y = rng.integers(0, C, rows)
        np.save(ypath, y)
        # into the page cache
        with open(path, "rb") as f:
            while f.read(1 << 26):
                pass
        size = os.path.getsize(path)
        results = {}
        for threads in (1, 2):
            walls, peaks = [], []
            for _ in range(repeats):
                env = dict(os.environ, OMP_NUM_THREADS=str(threads))
                t = time.perf_counter()
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "xentcy",
                        "eval",
                        path,
                        ypath,
                        "--batch-size",
                        str(batch),
                        "--json",
                        "--threads",
                        str(threads),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=env,
                )
                peaks.append(_sample_rss(proc.pid, proc))
                out, err = proc.communicate()
                walls.append(time.perf_counter() - t)
                if proc.returncode != 0:
                    raise SystemExit(err.decode())
            results[threads] = (statistics.median(walls), max(peaks))
        # the interpreter's start and xentcy's import, which every CLI run pays
        starts = []
        for _ in range(repeats):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import xentcy.__main__"], check=True)
            starts.append(time.perf_counter() - t)
        start = statistics.median(starts)
        # evaluate on the same data in memory (one thread), the floor of the CLI
        from xentcy._cpu import _core

        previous = _core.set_max_threads(1)
        whole = np.load(path)
        t_mem = statistics.median(timed(lambda: xc.evaluate(whole, y), max(1, repeats // 2)))
        _core.set_max_threads(previous)
        whole = None
    two_batches = 2 * batch * C * 4
    print(
        f"CLI: `python -m xentcy eval` on a {size / (1 << 30):.2f} GiB .npy ({rows} x {C} float32) in the "
        f"page cache, --batch-size {batch}, medians of {repeats} (process start included)\n"
    )
    print("| what | s | less the start | / evaluate in memory | peak RssAnon (MB) | two batches + 200 MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(f"| xentcy.evaluate on the array in memory, 1 thread | {t_mem:.3f} | | 1.00 | | |")
    print(f"| `python -c 'import xentcy.__main__'` (the start) | {start:.3f} | | | | |")
    for threads, (wall, peak) in results.items():
        own = wall - start
        print(
            f"| CLI, --threads {threads} | {wall:.3f} | {own:.3f} | {own / t_mem:.2f} | "
            f"{peak / 1e6:.0f} | {(two_batches + 200e6) / 1e6:.0f} |"
        )
    print(
        f"\n2 threads over 1 on the CLI: {results[1][0] / results[2][0]:.2f}x with the start, "
        f"{(results[1][0] - start) / (results[2][0] - start):.2f}x without"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--cli-gib", type=float, default=4.0)
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--cli-only", action="store_true")
    parser.add_argument("--reference-only", action="store_true")
    args = parser.parse_args()
    if args.reference_only:
        reference_logits(args.repeats)
        return
    if not args.cli_only:
        in_memory(args.repeats)
        reference_logits(args.repeats)
    if not args.skip_cli:
        cli(args.cli_gib, max(3, args.repeats // 2))


if __name__ == "__main__":
    main()
