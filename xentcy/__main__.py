"""Command line: ``python -m xentcy demo`` walks through the spec's worked example;
``python -m xentcy eval LOGITS TARGETS`` evaluates a model's saved logits."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

import xentcy
import xentcy._checks

# The worked example of cross-entropy.md: N = 2 samples, C = 3 classes.
EXAMPLE_A = [[2.0, 1.0, 0.1], [0.1, 2.0, 1.9]]
EXAMPLE_Y = [[0, 1, 0], [1, 0, 0]]


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A titled table with right-aligned columns."""
    cells = [list(header)] + [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(row[j]) for row in cells) for j in range(len(header))]
    lines = [title]
    for k, row in enumerate(cells):
        lines.append("  " + "  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
        if k == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def demo() -> str:
    """The worked example of cross-entropy.md, step by step, as xentcy computes it."""
    A = np.array(EXAMPLE_A)
    Y = np.array(EXAMPLE_Y)
    N, C = A.shape
    xent = xentcy.CrossEntropyLoss(reduction="mean")
    L = xent.forward(A, Y)
    dLdA = xent.backward()
    per_sample = xentcy.cross_entropy(A, Y, reduction="none")
    classes = [f"class {c}" for c in range(C)]

    def sample_rows(values: np.ndarray) -> list[list[object]]:
        return [[f"sample {i + 1}", *map(float, row)] for i, row in enumerate(values)]

    parts = [
        f"xentcy {xentcy.__version__}: the worked example of cross-entropy.md "
        f"(N = {N} samples, C = {C} classes; classes count from 0)",
        _table("Logits A", ["", *classes], sample_rows(A)),
        _table(
            "Targets Y (one-hot)",
            ["", *classes],
            [[f"sample {i + 1}", *row] for i, row in enumerate(EXAMPLE_Y)],
        ),
        _table("1. Softmax sigma(A) = exp(A) / sum_j exp(A_j)", ["", *classes], sample_rows(xent.softmax)),
        _table(
            "2. Cross-entropy per sample H_i = -sum_c Y_ic log sigma(A)_ic",
            ["", "target class", "loss"],
            [[f"sample {i + 1}", int(np.argmax(Y[i])), float(per_sample[i])] for i in range(N)],
        ),
        f"3. Mean cross-entropy loss  L = (H_1 + H_2) / N = {float(L):.4f}",
        _table("4. Gradient dL/dA = (sigma(A) - Y) / N", ["", *classes], sample_rows(dLdA)),
    ]
    return "\n\n".join(parts)


EVAL_EPILOG = """\
files:
  LOGITS and TARGETS are .npy files (memory-mapped: read batch by batch, never loaded
  whole) or members of an .npz archive, spelled FILE.npz:NAME (a compressed member is
  loaded whole into memory). TARGETS holds class indices (one dimension fewer than
  LOGITS) or class probabilities (LOGITS' shape).

example:
  python -m xentcy eval logits.npy labels.npy --top-k 1 5 --batch-size 4096
  python -m xentcy eval run.npz:logits run.npz:labels --ignore-index -100 --json
  python -m xentcy eval quantized.npy labels.npy --reference full_precision.npy
"""


class CliError(Exception):
    """A bad input, reported as one line on stderr (exit status 2)."""


def _load(spec: str, what: str) -> Any:
    """An array from FILE.npy (memory-mapped) or FILE.npz:NAME."""
    path, _, member = spec.partition(".npz:")
    if member:
        path += ".npz"
        if not os.path.exists(path):
            raise CliError(f"{what}: no such file: {path}")
        try:
            archive = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise CliError(f"{what}: cannot read {path}: {exc}") from None
        if member not in archive.files:
            raise CliError(f"{what}: {path} has no member {member!r} (it has {', '.join(archive.files)})")
        return archive[member]
    if not os.path.exists(spec):
        raise CliError(f"{what}: no such file: {spec}")
    if spec.endswith(".npz"):
        raise CliError(f"{what}: name the member of the archive: {spec}:NAME")
    try:
        return np.load(spec, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise CliError(f"{what}: cannot read {spec} as a .npy file: {exc}") from None


def _default_batch_rows(logits: Any, axis: int) -> int:
    """Rows of about 64 MiB of logits."""
    row_bytes = max(1, logits.itemsize * logits.shape[axis])
    return max(1, (64 << 20) // row_bytes)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _report_json(r: Any) -> str:
    out = {
        "count": r.count,
        "loss": _finite_or_none(r.loss),
        "perplexity": _finite_or_none(r.perplexity),
        "accuracy": {str(k): _finite_or_none(v) for k, v in r.accuracy.items()},
        "entropy": _finite_or_none(r.entropy),
        "loss_sum": _finite_or_none(r.loss_sum),
        "denominator": r.denominator,
        "entropy_sum": _finite_or_none(r.entropy_sum),
        "correct": {str(k): v for k, v in r.correct.items()},
    }
    if r.kl_divergence is not None:
        out["kl_divergence"] = _finite_or_none(r.kl_divergence)
        out["top1_agreement"] = _finite_or_none(r.top1_agreement)
    return json.dumps(out)


def _report_table(r: Any) -> str:
    rows: list[list[object]] = [
        ["rows counted", r.count],
        ["loss (mean)", r.loss],
        ["perplexity", r.perplexity],
    ]
    rows += [[f"top-{k} accuracy", v] for k, v in r.accuracy.items()]
    rows.append(["entropy (mean, nats)", r.entropy])
    if r.kl_divergence is not None:
        rows += [["KL(reference || model)", r.kl_divergence], ["top-1 agreement", r.top1_agreement]]
    return _table("xentcy eval", ["metric", "value"], rows)


def evaluate_files(args: argparse.Namespace) -> int:
    logits = _load(args.logits, "LOGITS")
    target = _load(args.targets, "TARGETS")
    reference = _load(args.reference, "--reference") if args.reference else None
    if args.threads is not None:
        if args.threads < 1:
            raise CliError(f"--threads must be at least 1, got {args.threads}")
        from xentcy._cpu import _core

        _core.set_max_threads(args.threads)
    if not hasattr(logits, "ndim") or logits.ndim < 1:
        raise CliError(f"LOGITS must have at least one dimension, got shape {getattr(logits, 'shape', ())}")
    try:
        axis = xentcy._checks.normalize_axis(args.axis, logits.ndim)
    except ValueError as exc:
        raise CliError(f"--axis: {exc}") from None
    batch = args.batch_size if args.batch_size is not None else _default_batch_rows(logits, axis)
    if args.device == "cuda":
        _check_gpu()
    progress = sys.stderr.isatty() and not args.json
    result = xentcy.evaluate(
        logits,
        target,
        axis=axis,
        ignore_index=args.ignore_index,
        label_smoothing=args.label_smoothing,
        top_k=tuple(args.top_k),
        batch_size=batch,
        reference=reference,
        progress=progress,
        device=args.device,
    )
    print(_report_json(result) if args.json else _report_table(result))
    return 0


def _check_gpu() -> None:
    """A CliError unless CuPy sees a usable GPU (for --device cuda)."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise CliError("--device cuda: CuPy sees no GPU")
    except ImportError:
        raise CliError("--device cuda needs CuPy (pip install cupy-cuda13x) and a GPU") from None
    except CliError:
        raise
    except Exception as exc:  # CUDA runtime errors have no common base
        raise CliError(f"--device cuda: no usable GPU: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xentcy",
        description="xentcy: exact, fast softmax cross-entropy and its gradient.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("demo", help="print the spec's worked example as xentcy computes it")
    ev = commands.add_parser(
        "eval",
        help="loss, perplexity, top-k accuracy and entropy of saved logits",
        description="Loss, perplexity, top-k accuracy and entropy of a model's logits against targets, "
        "in one pass over each row, batch by batch (a progress bar on a terminal).",
        epilog=EVAL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument("logits", metavar="LOGITS", help="logits: FILE.npy or FILE.npz:NAME (float32 or float64)")
    ev.add_argument(
        "targets", metavar="TARGETS", help="class indices or probabilities: FILE.npy or FILE.npz:NAME"
    )
    ev.add_argument(
        "--axis",
        type=int,
        default=-1,
        help="the class axis of LOGITS (default -1; PyTorch's (N, C, d1, ...) is 1)",
    )
    ev.add_argument(
        "--top-k",
        type=int,
        nargs="+",
        default=[1, 5],
        metavar="K",
        help="the k of the top-k accuracies (default: 1 5)",
    )
    ev.add_argument(
        "--ignore-index", type=int, default=-100, help="class index that counts for nothing (default -100)"
    )
    ev.add_argument(
        "--label-smoothing",
        type=float,
        default=0.0,
        help="epsilon in [0, 1] (default 0): the loss is the smoothed loss",
    )
    ev.add_argument(
        "--batch-size", type=int, default=None, help="rows per batch (default: about 64 MiB of logits)"
    )
    ev.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where the kernels run (cuda: CuPy and a GPU)",
    )
    ev.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: OpenMP's, OMP_NUM_THREADS)"
    )
    ev.add_argument(
        "--reference",
        metavar="REF",
        default=None,
        help="logits of a reference model (LOGITS' shape; FILE.npy or FILE.npz:NAME): "
        "adds the mean KL(p_ref || p) and the top-1 agreement",
    )
    ev.add_argument(
        "--json", action="store_true", help="print one JSON object instead of the table; no progress bar"
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        print(demo())
        return 0
    if args.command == "eval":
        try:
            return evaluate_files(args)
        except (CliError, ValueError, TypeError) as exc:
            print(f"xentcy eval: error: {exc}", file=sys.stderr)
            return 2
        except MemoryError:
            print("xentcy eval: error: out of memory (try a smaller --batch-size)", file=sys.stderr)
            return 2
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
