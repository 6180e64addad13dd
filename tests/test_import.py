"""Importing xentcy from a source tree whose extension was never built fails loudly."""

import shutil
import subprocess
import sys
from pathlib import Path

import xentcy


def test_unbuilt_tree_raises_import_error_that_says_how_to_build(tmp_path):
    source = Path(xentcy.__file__).parent
    shutil.copytree(
        source, tmp_path / "xentcy", ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__")
    )
    result = subprocess.run(
        [sys.executable, "-c", "import xentcy"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "is not built" in result.stderr and "pip install -e ." in result.stderr


def test_numpy_calls_import_no_other_array_library():
    code = (
        "import sys, numpy as np, xentcy as xc\n"
        "A = np.random.default_rng(0).standard_normal((8, 5)); y = np.arange(8) % 5\n"
        "xc.loss_and_grad(A, y); xc.cross_entropy(A, y); xc.softmax(A); xc.logsumexp(A)\n"
        "xc.CrossEntropyLoss()(A, y)\n"
        "print(sorted({'torch', 'jax', 'cupy', 'dask', 'array_api_strict'} & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
