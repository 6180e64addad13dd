"""CUDA on the CPU: xentcy's CUDA kernels compiled for the host, behind a launcher.

``cross_entropy.cu`` is compiled unchanged by the system C++ compiler, with
``cuda_on_cpu.h`` in front of it (the CUDA qualifiers, thread indices and
intrinsics) and ``launch.h`` behind it (every instantiation of
``xentcy._cuda.name_expressions()``, exported with C linkage). ``runtime.cpp``
runs each CUDA thread of a block as a fiber. :class:`HostLauncher` takes the
place of CuPy's ``RawModule`` in ``xentcy._cuda.CudaBackend``, so that NumPy
arrays go through the CUDA backend's own launcher code, argument for argument.

Two builds, kept under ``build/cuda_host`` by a hash of their sources: the
default one, optimised, with UBSan's alignment check (its handler turns a
misaligned access into an :class:`EmulationError`); and, where
``XENTCY_CUDA_HOST_ASAN=1`` (``scripts/sanitize.sh``, which preloads the ASan
runtime), one with AddressSanitizer too.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from xentcy import _cuda

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BUILD_DIR = ROOT / "build" / "cuda_host"
SOURCES = ("cuda_on_cpu.h", "runtime.cpp", "launch.h")

# element and scalar type codes (launch.h's enum Code)
CODES = {
    "float32": 1, "float64": 2, "float16": 3, "bfloat16": 4, "int64": 5, "int32": 6, "uint64": 7,
    "uint32": 8, "int16": 9, "uint16": 10, "int8": 11, "uint8": 12, "bool": 13,
}  # fmt: skip


class EmulationError(RuntimeError):
    """A launch the GPU would refuse, or whose behaviour on it would be undefined."""


class Unavailable(ImportError):
    """No C++ compiler or no CUDA headers to build the host kernels with."""


def asan_requested() -> bool:
    return os.environ.get("XENTCY_CUDA_HOST_ASAN") == "1"


def compiler() -> str:
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise Unavailable(f"no C++ compiler ({cxx}) to build the CUDA kernels for the host")
    return cxx


def cuda_include_dir() -> Path:
    """Where cuda_fp16.h and cuda_bf16.h are: they serve host code too."""
    candidates = []
    try:
        from cuda.pathfinder import find_nvidia_header_directory

        found = find_nvidia_header_directory("cudart")
        if found:
            candidates.append(Path(found))
    except ImportError:
        pass
    for var in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / "include")
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(nvcc).resolve().parent.parent / "include")
    candidates.append(Path("/usr/local/cuda/include"))
    for path in candidates:
        if (path / "cuda_fp16.h").is_file() and (path / "cuda_bf16.h").is_file():
            return path
    raise Unavailable(
        "the CUDA headers cuda_fp16.h and cuda_bf16.h were not found (nvcc, CUDA_PATH, CUDA_HOME)"
    )


def launch_bounds(source: str, names: list[str]) -> dict[str, int]:
    """Each instantiation's __launch_bounds__ (1024 without one), read from the templates of ``source``."""
    kernels = {}
    pattern = r"(?:template\s*<([^>]*)>\s*)?__global__\s+void\s+(?:__launch_bounds__\((\w+)\)\s*)?(\w+)\s*\("
    for m in re.finditer(pattern, source):
        params = [p.split()[-1] for p in (m.group(1) or "").split(",") if p.strip()]
        kernels[m.group(3)] = (params, m.group(2) or "1024")
    bounds = {}
    for name in names:
        base, _, args = name.partition("<")
        params, bound = kernels[base]
        values = [a.strip() for a in args.rstrip(">").split(",") if a.strip()]
        bounds[name] = int(values[params.index(bound)] if bound in params else bound)
    return bounds


def translation_unit(source_file: Path, names: list[str]) -> str:
    """A .cu file between the host header and the table of its instantiations ``names``.

    The .cu file is included by its name alone: build() puts a verbatim copy of it beside
    the unit, so that the build's hash does not depend on where the source tree lies (the
    sanitizer run imports a copy of xentcy from another folder)."""
    bounds = launch_bounds(source_file.read_text(), names)
    table = "".join(
        f'    {{"{name}", {bounds[name]}, &cuda_host::launch_entry<&{name}>}},\n' for name in names
    )
    return (
        '#include "cuda_on_cpu.h"\n'
        f'#include "{source_file.name}"\n'
        '#include "launch.h"\n\n'
        f"static const cuda_host::Entry cuda_host_entries[] = {{\n{table}}};\n"
        "CUDA_HOST_TABLE(cuda_host_entries)\n"
    )


def _flags(asan: bool, include: Path) -> tuple[list[str], list[str]]:
    """(compile, link) flags. No UBSan runtime is linked: runtime.cpp defines its handler."""
    compile_flags = [
        "-std=c++17", "-fPIC", "-fno-strict-aliasing", "-Wall", "-Wno-unknown-pragmas",
        "-fsanitize=alignment", f"-I{HERE}", f"-I{include}",
    ]  # fmt: skip
    link = ["-shared"]
    if asan:
        compile_flags += ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address"]
        link += ["-fsanitize=address"]
    else:
        compile_flags += ["-O2"]
    return compile_flags, link


def build(asan: bool | None = None, source_file: Path | None = None, names: list[str] | None = None) -> Path:
    """The host library of ``source_file``'s instantiations ``names`` (default: xentcy's kernels),
    built once per source hash and flavour: its path."""
    asan = asan_requested() if asan is None else asan
    if source_file is None:
        source_file, names = _cuda.SOURCE_FILE, _cuda.name_expressions()
    cxx, include = compiler(), cuda_include_dir()
    compile_flags, link = _flags(asan, include)
    unit = translation_unit(source_file, names)
    digest = hashlib.sha256()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                             env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}).stdout
    for part in (unit, source_file.read_text(), version, " ".join(compile_flags + link), *(
        (HERE / s).read_text() for s in SOURCES
    )):
        digest.update(part.encode())
    target = BUILD_DIR / f"{source_file.stem}-{'asan' if asan else 'fast'}-{digest.hexdigest()[:16]}"
    library = target / "libcuda_host.so"
    if library.exists():
        return library
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=BUILD_DIR, prefix="tmp-"))
    (work / "instances.cpp").write_text(unit)
    shutil.copyfile(source_file, work / source_file.name)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}  # no sanitizer runtime in the compiler
    jobs = [
        subprocess.Popen([cxx, *compile_flags, "-c", str(src), "-o", str(work / f"{src.stem}.o")],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for src in (HERE / "runtime.cpp", work / "instances.cpp")
    ]  # fmt: skip
    for job in jobs:
        log, _ = job.communicate()
        if job.returncode != 0:
            raise RuntimeError(f"building the host kernels failed:\n{' '.join(job.args)}\n{log}")
    subprocess.run([cxx, *link, "-o", str(work / "libcuda_host.so"), str(work / "runtime.o"),
                    str(work / "instances.o")], check=True, capture_output=True, env=env)  # fmt: skip
    try:
        work.rename(target)
    except OSError:  # built meanwhile by another process
        shutil.rmtree(work, ignore_errors=True)
    return library


class _Arg(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_int32), ("code", ctypes.c_int32), ("writable", ctypes.c_int32),
        ("pad", ctypes.c_int32), ("bits", ctypes.c_uint64), ("nbytes", ctypes.c_uint64),
    ]  # fmt: skip


@functools.cache
def library(asan: bool | None = None, source_file: Path | None = None, names: tuple[str, ...] | None = None
            ) -> ctypes.CDLL:
    """The loaded host library (see :func:`build`)."""
    lib = ctypes.CDLL(str(build(asan, source_file, None if names is None else list(names))))
    lib.cuda_host_launch.argtypes = [
        ctypes.c_char_p, ctypes.POINTER(_Arg), ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
        ctypes.c_ulonglong, ctypes.c_int, ctypes.c_char_p, ctypes.c_ulong,
    ]  # fmt: skip
    lib.cuda_host_launch.restype = ctypes.c_int
    lib.cuda_host_kernel_name.restype = ctypes.c_char_p
    lib.cuda_host_kernel_name.argtypes = [ctypes.c_int]
    for name, arg, res in (
        ("half_to_float", ctypes.c_ushort, ctypes.c_float),
        ("float_to_half", ctypes.c_float, ctypes.c_ushort),
        ("bfloat16_to_float", ctypes.c_ushort, ctypes.c_float),
        ("float_to_bfloat16", ctypes.c_float, ctypes.c_ushort),
    ):  # fmt: skip
        fn = getattr(lib, f"cuda_host_{name}")
        fn.argtypes, fn.restype = [arg], res
    return lib


def kernel_names(lib: ctypes.CDLL) -> list[str]:
    return [lib.cuda_host_kernel_name(i).decode() for i in range(lib.cuda_host_kernel_count())]


def pack(name: str, args: tuple) -> ctypes.Array:
    """The kernel arguments as CuPy would pack them: arrays as pointers, NumPy scalars as their bytes."""
    packed = (_Arg * len(args))()
    for i, a in enumerate(args):
        if isinstance(a, np.ndarray):
            packed[i] = _Arg(1, CODES[a.dtype.name], int(a.flags.writeable), 0, a.ctypes.data, a.nbytes)
            continue
        if isinstance(a, bool):  # CuPy's Python scalars: bool, int as int64, float as float64
            a = np.bool_(a)
        elif isinstance(a, int):
            a = np.int64(a)
        elif isinstance(a, float):
            a = np.float64(a)
        if not isinstance(a, np.generic):
            raise TypeError(f"argument {i} of {name} is a {type(a).__name__}, not an array or a scalar")
        packed[i] = _Arg(0, CODES[a.dtype.name], 0, 0, int.from_bytes(a.tobytes().ljust(8, b"\0"), "little"),
                         a.nbytes)  # fmt: skip
    return packed


class HostLauncher:
    """Launches the host-compiled kernels on NumPy arrays (``xentcy._cuda``'s launcher interface).

    ``block_seed`` (non-zero) runs each grid's blocks in an order shuffled by it;
    ``thread_order`` runs a block's ready threads ascending (0), descending (1) or
    in a new random order each round (2).
    """

    _lock = threading.Lock()  # the scheduler's state is global: one launch at a time

    def __init__(self, lib: ctypes.CDLL | None = None, *, block_seed: int = 0, thread_order: int = 0) -> None:
        self.lib = library() if lib is None else lib
        self.block_seed, self.thread_order = block_seed, thread_order
        self.launches: list[tuple[str, int, int]] = []  # (name, grid, block) of each launch

    def device(self, x: np.ndarray) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def address(self, x: np.ndarray) -> int:
        return x.ctypes.data

    def launch(self, dtype_name: str, name: str, grid: int, block: int, args: tuple) -> None:
        packed = pack(name, args)
        error = ctypes.create_string_buffer(4096)
        self.launches.append((name, grid, block))
        with self._lock:
            status = self.lib.cuda_host_launch(
                name.encode(), packed, len(args), grid, block, self.block_seed, self.thread_order, error, 4096
            )
        if status != 0:
            raise EmulationError(error.value.decode())


def backend(**launcher_options) -> _cuda.CudaBackend:
    """xentcy's CUDA backend on NumPy arrays, through the host kernels."""
    return _cuda.CudaBackend(np, HostLauncher(**launcher_options))
