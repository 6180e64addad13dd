"""Shared fixtures: the ``xp`` fixture runs a test once per array backend.

As in SciPy's conftest, every backend that is importable (and, for CuPy,
has a usable GPU) is a parameter; a missing one is skipped with the reason.
"""

import os
import sys

import pytest

# The helper modules (backends.py, reference.py) sit beside the tests;
# make them importable whatever pytest's import mode is.
_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from backends import BACKEND_NAMES, load  # noqa: E402


@pytest.fixture(params=BACKEND_NAMES, ids=BACKEND_NAMES)
def xp(request):
    try:
        return load(request.param)
    except ImportError as exc:
        pytest.skip(f"backend {request.param} unavailable: {exc}")
