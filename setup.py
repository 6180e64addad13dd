"""Build the Cython CPU core, with OpenMP where the compiler has it.

No -march=native: one build must run on any CPU of its architecture.
"""

import os
import tempfile
import warnings

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# Flags added to every compile and link, last (so an -O level here wins): the sanitizer
# build of scripts/sanitize.sh sets them. Empty for a normal build.
EXTRA_FLAGS = os.environ.get("XENTCY_EXTRA_FLAGS", "").split()


def _openmp_flags(compiler) -> tuple[list[str], list[str]]:
    """(compile, link) flags for OpenMP, or two empty lists where it does not build."""
    if compiler.compiler_type == "msvc":
        return ["/openmp"], []
    flags = ["-fopenmp"] + EXTRA_FLAGS
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "omp_check.c")
        with open(source, "w") as f:
            f.write("#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        try:
            objects = compiler.compile([source], output_dir=tmp, extra_postargs=flags)
            compiler.link_executable(objects, "omp_check", output_dir=tmp, extra_postargs=flags)
        except Exception:  # noqa: BLE001 - any compiler or linker failure means no OpenMP
            return [], []
    return ["-fopenmp"], ["-fopenmp"]


class BuildExt(build_ext):
    def build_extensions(self) -> None:
        compile_flags, link_flags = _openmp_flags(self.compiler)
        if not compile_flags:
            warnings.warn(
                "the C compiler has no OpenMP: xentcy's CPU core is built single-threaded",
                stacklevel=1,
            )
        optimise = ["/O2"] if self.compiler.compiler_type == "msvc" else ["-O3"]
        for ext in self.extensions:
            ext.extra_compile_args = optimise + compile_flags + ext.extra_compile_args + EXTRA_FLAGS
            ext.extra_link_args = link_flags + ext.extra_link_args + EXTRA_FLAGS
        super().build_extensions()


extensions = [
    Extension(
        "xentcy._cpu._core",
        ["xentcy/_cpu/_core.pyx"],
        include_dirs=["xentcy/_cpu"],
        depends=[
            f"xentcy/_cpu/{h}"
            for h in (
                "xent_dispatch.h", "xent_eval.h", "xent_pair.h", "xent_rows.h", "xent_simd.h", "xent_xla.h"
            )
        ],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": 3},
        annotate=bool(os.environ.get("XENTCY_ANNOTATE")),
        quiet=True,
    ),
    cmdclass={"build_ext": BuildExt},
)
