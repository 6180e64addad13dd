"""The CUDA kernels compile, without a GPU: every instantiation the launcher requests.

A template that is never instantiated is never checked, so these tests compile
exactly the name expressions that ``xentcy._cuda`` hands ``cupy.RawModule``,
for every dtype, for sm_80 and sm_90, with warnings (and register spills) as
errors: through nvcc over a file that instantiates each one, and through
NVRTC itself where CuPy imports (what RawModule runs). Each skips with the
reason where its compiler is missing.
"""

import io
import os
import shutil
import subprocess
import sys

import pytest

from xentcy import _cuda

ARCHES = ("80", "90")


def _instantiating_source() -> str:
    """The kernel source followed by a table that takes each kernel's address.

    Taking the address instantiates the template from its name expression as
    written, as NVRTC does for name_expressions.
    """
    table = "".join(f"    (void*)&{name},\n" for name in _cuda.name_expressions())
    return (
        _cuda.kernel_source()
        + "\nstatic void* const xentcy_instances[] = {\n"
        + table
        + "};\nvoid* xentcy_instance(int i) { return xentcy_instances[i]; }\n"
    )


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root and os.path.exists(os.path.join(root, "bin", "nvcc")):
            return os.path.join(root, "bin", "nvcc")
    return None


@pytest.mark.parametrize("arch", ARCHES)
def test_every_instantiation_compiles_with_nvcc(arch, tmp_path):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (PATH, CUDA_PATH, CUDA_HOME, /usr/local/cuda)")
    source = tmp_path / "instances.cu"
    source.write_text(_instantiating_source())
    # NVRTC's settings as CuPy uses them: C++17, -ftz=true, cubin for one architecture.
    cmd = [
        nvcc, "-std=c++17", "-ftz=true", f"-arch=sm_{arch}", "-c", "--Werror", "all-warnings",
        "-Xptxas", "-v", "-Xptxas", "-warn-spills", "-Xptxas", "-warn-lmem-usage",
        "-o", str(tmp_path / "instances.o"), str(source),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    report = result.stdout + result.stderr
    if arch == "90":
        sys.stdout.write(report)  # the resource report; see benchmarks/gpu-notes.md
    assert result.returncode == 0, report
    kernels = [line for line in report.splitlines() if "Compiling entry function" in line]
    assert len(kernels) == len(_cuda.name_expressions()), report


@pytest.mark.parametrize("arch", ARCHES)
def test_every_instantiation_compiles_with_nvrtc(arch, tmp_path):
    try:
        from cupy.cuda import compiler
    except ImportError as exc:
        pytest.skip(f"CuPy (and with it NVRTC) not importable: {exc}")
    if not hasattr(compiler, "_NVRTCProgram"):
        pytest.skip("this CuPy has no compiler._NVRTCProgram to compile for a named architecture")
    try:  # where CuPy finds cuda_fp16.h and cuda_bf16.h for RawModule
        from cuda.pathfinder import find_nvidia_header_directory

        cuda_include = find_nvidia_header_directory("cudart")
    except ImportError:
        cuda_include = None
    if cuda_include is None:
        pytest.skip("the CUDA headers (cuda_fp16.h) were not found by cuda.pathfinder")
    names = _cuda.name_expressions()
    # RawModule's options: ours, CuPy's include path, -ftz=true and default execution
    # space, the target as cubin. CuPy's public compile_using_nvrtc asks the GPU for the
    # target, so without one this goes a level down, to the program object it uses.
    options = (
        *_cuda.COMPILE_OPTIONS,
        f"-I{cuda_include}",
        "-ftz=true",
        f"-arch=sm_{arch}",
        "--device-as-default-execution-space",
    )
    source = tmp_path / "cross_entropy.cu"
    source.write_text(_cuda.kernel_source())
    program = compiler._NVRTCProgram(
        _cuda.kernel_source(), str(source), (), (), name_expressions=names, method="cubin"
    )
    log = io.StringIO()  # NVRTC has no -Werror: its log must stay empty instead
    try:
        _, mapping = program.compile(options, log)
    except compiler.CompileException as exc:
        pytest.fail(f"NVRTC failed for sm_{arch}:\n{exc}")
    assert "warning" not in log.getvalue().lower(), log.getvalue()
    assert set(mapping) == set(names)


def test_every_planned_kernel_is_instantiated():
    names = set(_cuda.name_expressions())
    for kernel in ("index", "prob", "softmax", "logsumexp", *_cuda.OPTION_KERNELS):
        for dtype_name in _cuda.C_TYPES:
            for num_classes in (1, 2, 3, 10, 31, 100, 1000, 1024, 1025, 4096, 8192, 16384, 32000, 131072):
                p = _cuda.plan(kernel, dtype_name, 1000, num_classes)
                assert p.name in names


@pytest.mark.parametrize("num_classes", [1, 7, 10, 100, 1000, 4096, 32000, 131072, 1 << 20])
@pytest.mark.parametrize("dtype_name", list(_cuda.C_TYPES))
def test_plans_cover_the_rows_within_the_launch_bounds(dtype_name, num_classes):
    for kernel in ("index", "prob", "softmax", "logsumexp", *_cuda.OPTION_KERNELS):
        p = _cuda.plan(kernel, dtype_name, 65536, num_classes)
        assert p.group & (p.group - 1) == 0 and 1 <= p.group <= 1024
        assert p.block % p.group == 0 and p.block <= 1024
        rows_per_block = p.block // p.group
        assert (p.grid - 1) * rows_per_block < 65536 <= p.grid * rows_per_block
        if "_cached<" in p.name:
            nv, max_threads = (int(v) for v in p.name[:-1].split(", ")[1:])
            vec = 16 // {"float64": 8, "float32": 4}.get(dtype_name, 2)
            assert p.group * nv * vec >= num_classes  # the row fits the registers
            assert p.block <= max_threads
        elif "_options_streamed<" in p.name:  # (the option kernels' streamed launch bound)
            assert p.block <= int(p.name[:-1].split(", ")[1])


def test_small_rows_take_a_warp_or_less():
    for num_classes in (10, 100, 1000, 1024):
        assert _cuda.plan("index", "float32", 65536, num_classes).group <= 32


# The plan, decided (benchmarks/gpu-notes.md, "Design"): a row of up to 32 vectors takes a
# group of up to a warp, one vector a thread; a longer row the smallest group from a warp up
# whose threads hold it in registers with a tier's NV vectors, where that tier's launch bound
# allows the block; longer rows are streamed by 1024 threads. (dtype, C) -> (kernel, G, block).
PLAN = [
    ("float32", 1, "xentcy_index_cached<float, 1, 1024>", 1, 256),
    ("float32", 4, "xentcy_index_cached<float, 1, 1024>", 1, 256),
    ("float32", 5, "xentcy_index_cached<float, 1, 1024>", 2, 256),
    ("float32", 10, "xentcy_index_cached<float, 1, 1024>", 4, 256),
    ("float32", 128, "xentcy_index_cached<float, 1, 1024>", 32, 256),
    ("float32", 129, "xentcy_index_cached<float, 2, 1024>", 32, 256),
    ("float32", 512, "xentcy_index_cached<float, 4, 512>", 32, 256),
    ("float32", 1000, "xentcy_index_cached<float, 8, 256>", 32, 256),
    ("float32", 1025, "xentcy_index_cached<float, 8, 256>", 64, 64),
    ("float32", 3000, "xentcy_index_cached<float, 8, 256>", 128, 128),
    ("float32", 8192, "xentcy_index_cached<float, 8, 256>", 256, 256),
    # a (4, 1024) tier would cache these, but spills at the 64 registers of a 1024-thread bound
    ("float32", 8193, "xentcy_index_streamed<float>", 1024, 1024),
    ("float32", 16384, "xentcy_index_streamed<float>", 1024, 1024),
    ("float32", 32000, "xentcy_index_streamed<float>", 1024, 1024),
    ("float64", 4096, "xentcy_index_cached<double, 8, 256>", 256, 256),
    ("float64", 4097, "xentcy_index_streamed<double>", 1024, 1024),
    ("float16", 8192, "xentcy_index_cached<__half, 4, 256>", 256, 256),
    ("float16", 16384, "xentcy_index_cached<__half, 2, 1024>", 1024, 1024),
    ("bfloat16", 16385, "xentcy_index_streamed<__nv_bfloat16>", 1024, 1024),
    ("bfloat16", 32000, "xentcy_index_streamed<__nv_bfloat16>", 1024, 1024),
]


@pytest.mark.parametrize("dtype_name, num_classes, name, group, block", PLAN)
def test_the_plan_picks_the_decided_kernel_and_group(dtype_name, num_classes, name, group, block):
    p = _cuda.plan("index", dtype_name, 1000, num_classes)
    assert (p.name, p.group, p.block) == (name, group, block)
    assert p.grid == -(-1000 // (block // group))


# The option kernels' plan where it differs from the plain one: their own tiers where the plain
# ones' would spill (xentcy/_cuda/__init__.py, _CACHED_OPTIONS), float64 streamed by 512 threads.
PLAN_OPTIONS = [
    ("float32", 1000, "xentcy_index_options_cached<float, 8, 256>", 32, 256),
    ("float32", 8193, "xentcy_index_options_streamed<float, 1024>", 1024, 1024),
    ("float64", 100, "xentcy_index_options_cached<double, 2, 512>", 32, 256),
    ("float64", 4096, "xentcy_index_options_cached<double, 8, 256>", 256, 256),
    ("float64", 4097, "xentcy_index_options_streamed<double, 512>", 512, 512),
    ("float16", 8192, "xentcy_index_options_cached<__half, 4, 256>", 256, 256),
    ("float16", 8193, "xentcy_index_options_streamed<__half, 1024>", 1024, 1024),  # plain: (2, 1024)
    ("bfloat16", 16384, "xentcy_index_options_streamed<__nv_bfloat16, 1024>", 1024, 1024),
]


@pytest.mark.parametrize("dtype_name, num_classes, name, group, block", PLAN_OPTIONS)
def test_the_option_plan_picks_the_decided_kernel_and_group(dtype_name, num_classes, name, group, block):
    p = _cuda.plan("index_options", dtype_name, 1000, num_classes)
    assert (p.name, p.group, p.block) == (name, group, block)
    assert p.grid == -(-1000 // (block // group))


def test_the_plain_and_option_kernels_are_two_modules():
    plain, options = _cuda.name_expressions(options=False), _cuda.name_expressions(options=True)
    assert not set(plain) & set(options) and sorted(plain + options) == sorted(_cuda.name_expressions())
    assert all("_options_" in name for name in options) and not any("_options_" in name for name in plain)


def test_cached_rows_take_at_most_256_threads_except_the_one_vector_and_two_vector_tiers():
    """A 512-thread group is never planned, and a 1024-thread cached group only where a tier of
    one or two vectors a thread allows it (half types; float32 probabilities)."""
    for kernel in ("index", "prob", "softmax"):
        for dtype_name in _cuda.C_TYPES:
            for c in range(1, 140_000, 13):
                p = _cuda.plan(kernel, dtype_name, 1, c)
                assert p.group != 512
                if "_cached<" in p.name and p.group == 1024:
                    assert int(p.name.split(", ")[1]) <= 2, (kernel, dtype_name, c, p)
