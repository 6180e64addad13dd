"""Shared fixtures: the ``xp`` fixture runs a test once per array backend.

As in SciPy's conftest, every backend that is importable (and, for CuPy,
has a usable GPU) is a parameter; a missing one is skipped with the reason.
"""

import contextlib
import os
import random
import sys

import pytest

# The helper modules (backends.py, reference.py) sit beside the tests;
# make them importable whatever pytest's import mode is.
_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from backends import BACKEND_NAMES, load  # noqa: E402

# The sanitizer run (scripts/sanitize.sh): no foreign array library, whose code is not built
# with the sanitizers (their tests skip, as where they are not installed), and the xentcy
# core under test is the sanitized build, not another one found first.
if os.environ.get("XENTCY_SANITIZE"):
    import importlib.abc

    class _NotInThisRun(importlib.abc.MetaPathFinder):
        NAMES = ("torch", "jax", "jaxlib", "dask", "distributed", "cupy")

        def find_spec(self, name, path, target=None):
            if name.partition(".")[0] in self.NAMES:
                raise ModuleNotFoundError(f"{name} is not imported in the sanitizer run")
            return None

    sys.meta_path.insert(0, _NotInThisRun())

    def pytest_sessionstart(session):
        from xentcy._cpu import _core

        expected = os.environ["XENTCY_EXPECT_CORE"]
        if os.path.realpath(_core.__file__) != os.path.realpath(expected):
            raise pytest.UsageError(f"the sanitizer run loaded {_core.__file__}, not {expected}")


def _skip_by_markers(node, name):
    """Backend-specific expectations as markers on the test, not branches in it (as SciPy's
    ``skip_xp_backends``): ``@pytest.mark.skip_xp_backends(*names, reason=...)`` skips
    those backends, ``@pytest.mark.only_xp_backends(*names, reason=...)`` all others."""
    for mark in node.iter_markers("skip_xp_backends"):
        if name in mark.args:
            pytest.skip(f"{name}: {mark.kwargs['reason']}")
    for mark in node.iter_markers("only_xp_backends"):
        if name not in mark.args:
            pytest.skip(f"{name}: {mark.kwargs['reason']}")


@pytest.fixture(params=BACKEND_NAMES, ids=BACKEND_NAMES)
def xp(request):
    _skip_by_markers(request.node, request.param)
    try:
        namespace = load(request.param)
    except ImportError as exc:
        pytest.skip(f"backend {request.param} unavailable: {exc}")
    if request.param != "cuda_host":
        yield namespace
        return
    with cuda_host_backend():
        yield namespace


# --- the CUDA backend on the CPU ------------------------------------------------
# Every launch of the session runs its blocks in an order shuffled by one seed, printed in
# the header (XENTCY_CUDA_HOST_SEED=... repeats it): the order of blocks must not matter.
CUDA_HOST_SEED = int(os.environ.get("XENTCY_CUDA_HOST_SEED") or random.SystemRandom().randrange(1, 2**63))


def pytest_report_header(config):
    return f"cuda_host: blocks of every launch in an order shuffled by XENTCY_CUDA_HOST_SEED={CUDA_HOST_SEED}"


@contextlib.contextmanager
def cuda_host_backend(**launcher_options):
    """Within the block, NumPy arrays run through the CUDA backend and its host kernels."""
    import cuda_host

    from xentcy import _testing

    options = {"block_seed": CUDA_HOST_SEED, **launcher_options}
    with _testing.numpy_arrays_on(cuda_host.backend(**options)) as backend:
        yield backend


@pytest.fixture(params=["cpu", "cuda_host"])
def numpy_backend(request):
    """Runs a NumPy-only test once on the CPU core and once on the CUDA backend's host kernels."""
    if request.param == "cpu":
        yield "cpu"
        return
    if request.node.get_closest_marker("cpu_core_only"):
        pytest.skip("a case of the CPU core alone (its dtypes, its threads)")
    try:
        load("cuda_host")
    except ImportError as exc:
        pytest.skip(f"backend cuda_host unavailable: {exc}")
    with cuda_host_backend():
        yield "cuda_host"


# --- crash isolation ----------------------------------------------------------
# A test marked ``isolated`` runs in a subprocess of its own (``python -m pytest
# <its node id>``), so that a crash (a segfault in a compiled kernel, an abort)
# fails that test with its exit status instead of ending the whole run.

_CHILD = "XENTCY_ISOLATED_CHILD"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "isolated: run in a subprocess, so that a crash fails the test instead of the run"
    )
    config.addinivalue_line(
        "markers", "cpu_core_only: the numpy_backend fixture runs it on the CPU core, not on cuda_host"
    )
    config.addinivalue_line(
        "markers", "skip_xp_backends(*names, reason): the xp fixture skips these backends, with the reason"
    )
    config.addinivalue_line(
        "markers", "only_xp_backends(*names, reason): the xp fixture runs only these backends"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    if pyfuncitem.get_closest_marker("isolated") is None or os.environ.get(_CHILD):
        return None
    import signal
    import subprocess

    env = dict(os.environ, **{_CHILD: "1"})
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--no-header",
         pyfuncitem.nodeid],
        cwd=str(pyfuncitem.config.rootpath),
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        status = result.returncode
        how = f"exited with status {status}"
        if status < 0:
            how = f"was killed by {signal.Signals(-status).name}"
        err = result.stderr
        if len(err) > 6000:  # a sanitizer's report starts with what it found: keep the head too
            err = f"{err[:3000]}\n[...]\n{err[-3000:]}"
        pytest.fail(f"the isolated test {how}:\n{result.stdout[-4000:]}\n{err}", pytrace=False)
    if " skipped" in result.stdout and " passed" not in result.stdout:
        reasons = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
        pytest.skip(f"in its subprocess: {reasons[0] if reasons else result.stdout.strip()}")
    return True


def pytest_terminal_summary(terminalreporter, config):
    """The counts of tests/test_fuzz.py, where it ran."""
    counts = getattr(config, "xentcy_fuzz_counts", None)
    if not counts or not counts[2]:
        return
    examples, isas, stats = counts
    terminalreporter.section("differential fuzzing")
    terminalreporter.write_line(f"{examples} examples per function; kernels: {', '.join(isas)}")
    for name, c in sorted(stats.items()):
        terminalreporter.write_line(
            f"  {name:18} {c['cases']:6} cases: {c['raised']:5} raised a clear error, "
            f"{c['matched']:5} matched the float64 reference ({c['torch']:4} torch too), "
            f"{c['mismatches']} mismatches"
        )
