"""Command line: ``python -m xentcy demo`` walks through the spec's worked example."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

import xentcy

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xentcy",
        description="xentcy: exact, fast softmax cross-entropy and its gradient.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("demo", help="print the spec's worked example as xentcy computes it")
    args = parser.parse_args(argv)
    if args.command == "demo":
        print(demo())
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
