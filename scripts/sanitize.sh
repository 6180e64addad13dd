#!/usr/bin/env bash
# The CPU core once more, built with AddressSanitizer and UndefinedBehaviorSanitizer in a
# directory of its own, and the NumPy cases of the conformance, fuzz, error and reliability
# suites run against that build, with the sanitizer runtime preloaded; so do their cuda_host
# cases, on an ASan build of the CUDA kernels for the CPU (tests/cuda_host). Any report stops the
# process (abort_on_error, -fno-sanitize-recover=all), which fails the run.
#
#     scripts/sanitize.sh                       # build, then test (from an environment with the test extras)
#     scripts/sanitize.sh build                 # the build alone (CI runs it beside the test suite)
#     scripts/sanitize.sh test                  # the tests alone, against the last build
#     XENTCY_FUZZ_EXAMPLES=5000 scripts/sanitize.sh
#
# No torch, JAX, Dask or CuPy in this run (tests/conftest.py blocks their import under
# XENTCY_SANITIZE=1): their own code is not built with the sanitizers, and they are not ours.
set -euo pipefail
cd "$(dirname "$0")/.."

step="${1:-all}"
out="${XENTCY_SANITIZE_DIR:-build/sanitize}"

if [[ "$step" == all || "$step" == build ]]; then
# the build's own requirements (pyproject.toml [build-system]): pip's isolated build env has them,
# an environment made by `pip install -e .` does not
python -m pip install -q "cython>=3" "setuptools>=64" wheel
rm -rf "$out"
mkdir -p "$out"
# the Python sources beside the sanitized extension, so that `import xentcy` finds both there
python -c "import shutil, sys; shutil.copytree('xentcy', sys.argv[1] + '/xentcy', ignore=shutil.ignore_patterns('*.so', '__pycache__'))" "$out"

# -O1: the sanitizers' usual level (an -O3 build of the three instruction sets takes minutes)
export XENTCY_EXTRA_FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g -O1"
echo "building the sanitized core into $out ($XENTCY_EXTRA_FLAGS)"
python setup.py -q build_ext --build-lib "$out" --build-temp "$out/tmp" > "$out/build.log" 2>&1 \
    || { cat "$out/build.log"; exit 1; }
if grep -q "has no OpenMP" "$out/build.log"; then
    cat "$out/build.log"
    echo "the sanitized core was built without OpenMP: its threads would go unchecked" >&2
    exit 1
fi
unset XENTCY_EXTRA_FLAGS
echo "sanitized core: $(realpath "$out"/xentcy/_cpu/_core*.so)"
# the CUDA kernels on the CPU (tests/cuda_host), built with ASan too
echo "sanitized CUDA host kernels: $(python -c "import sys; sys.path.insert(0, 'tests'); import cuda_host; print(cuda_host.build(asan=True))")"
fi
[[ "$step" == all || "$step" == test ]] || exit 0

core=$(realpath "$out"/xentcy/_cpu/_core*.so)

asan=$(gcc -print-file-name=libasan.so)
# detect_leaks=0: the interpreter's own allocations at exit are not ours
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:verify_asan_link_order=0:strict_string_checks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export XENTCY_SANITIZE=1 XENTCY_EXPECT_CORE="$core" XENTCY_CUDA_HOST_ASAN=1
export XENTCY_FUZZ_EXAMPLES="${XENTCY_FUZZ_EXAMPLES:-500}"
# PYTHONSAFEPATH: `python -m` would put the source tree (and its unsanitized core) first
LD_PRELOAD="$asan" PYTHONSAFEPATH=1 PYTHONPATH="$(realpath "$out")" python -m pytest -q -p no:cacheprovider \
    --durations=5 -k "not cupy and not torch and not jax and not dask" \
    tests/test_worked_example.py tests/test_conformance.py tests/test_errors.py tests/test_edge_cases.py \
    tests/test_numpy_layouts.py tests/test_gradients.py tests/test_reliability.py tests/test_fuzz.py \
    tests/test_cuda_backend.py tests/test_cuda_host.py tests/test_compare_rows.py tests/test_xla_handler.py \
    tests/test_lm_options.py tests/test_cuda_options.py
