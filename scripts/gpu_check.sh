#!/usr/bin/env bash
# The CuPy backend on a lent GPU machine, in one command (issues 4, 12 and 13): build, test, benchmark.
#
# Run from the repository root, with the array-api-compat wheel carried in .whl/
# (the machine has no network). Everything printed also goes to $OUT/gpu_check.log
# when OUT is set. Budget: under 5 minutes, build included.
set -euo pipefail

log=/dev/null
if [[ -n "${OUT:-}" ]]; then
    mkdir -p "$OUT"
    log="$OUT/gpu_check.log"
fi
exec > >(tee "$log") 2>&1
export PYTHONUNBUFFERED=1

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
python3 -c "import cupy, numpy, torch; print('cupy', cupy.__version__, 'cuda runtime', cupy.cuda.runtime.runtimeGetVersion(), 'numpy', numpy.__version__, 'torch', torch.__version__)"

echo "== build"
time python3 -m pip install -q --no-build-isolation --no-deps -e .

# A failing step does not stop the later ones: one run on the machine should show everything.
failed=()
run() {
    local name=$1
    shift
    echo "== $name"
    local status=0
    time "$@" || status=$?
    if [[ $status -ne 0 && $status -ne 5 ]]; then  # pytest 5: no test matched
        failed+=("$name (exit $status)")
    fi
}

# The cupy half of the one conformance suite: the same cases that run on the CPU as cuda_host
# (tests/cuda_host) in every CI run, here on the GPU through CuPy's RawModule launcher.
# test_cuda_options.py: the kernels of the language-model options (z_loss, softcap, temperature).
run "tests" python3 -m pytest -q -rs -p no:cacheprovider tests/test_cuda_backend.py tests/test_cuda_options.py \
    tests/test_cuda_compile.py -k "not cuda_host"
run "conformance suite, cupy half" python3 -m pytest -q -rs -p no:cacheprovider tests -k cupy \
    --ignore=tests/test_cuda_backend.py --ignore=tests/test_cuda_options.py --ignore=tests/test_cuda_compile.py \
    --ignore=tests/test_cuda_host.py
run "benchmark" python3 benchmarks/bench_gpu.py
# Batch evaluation streamed from a memmap through pinned buffers, a copy stream and events
# (xentcy._stream.CudaLane, issue 13): the only part of the pipeline that the CPU runs of the
# tests cannot reach. Its figures against the CPU core's, its speed against the bare copy.
run "evaluation streamed to the GPU" python3 benchmarks/bench_eval_gpu.py --gib 2
run "evaluation tests, cupy" python3 -m pytest -q -rs -p no:cacheprovider tests/test_evaluate.py -k cupy
# torch CUDA tensors viewed as CuPy on torch's current stream (xentcy._dispatch.route, issue 14)
run "torch CUDA route" python3 -m pytest -q -rs -p no:cacheprovider tests/test_torch.py -k cuda
# linear_cross_entropy on CuPy: cuBLAS matmuls around xentcy's kernels, chunk by chunk (issue 16)
run "linear cross-entropy, cupy" python3 -m pytest -q -rs -p no:cacheprovider tests/test_linear.py -k cupy

if [[ ${#failed[@]} -ne 0 ]]; then
    printf 'FAILED: %s\n' "${failed[@]}"
    exit 1
fi
echo "gpu_check: all steps passed"
