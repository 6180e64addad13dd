"""The CUDA kernels' resource report, without a GPU: registers, spills and stack of every
instantiation the launcher requests, as ptxas gives them (nvcc -Xptxas -v), one line each.

    python benchmarks/cuda_resources.py [--arch 90] [--out FILE]

For a before/after of a kernel change: run it on both commits and diff the outputs (the
lines are sorted by name). Needs nvcc (PATH, CUDA_PATH, CUDA_HOME or /usr/local/cuda).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

from xentcy import _cuda

ENTRY = re.compile(r"Compiling entry function '(\S+)'")
USED = re.compile(r"Used (\d+) registers")
SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def nvcc() -> str:
    found = shutil.which("nvcc")
    for root in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if not found and root and os.path.exists(os.path.join(root, "bin", "nvcc")):
            found = os.path.join(root, "bin", "nvcc")
    if not found:
        sys.exit("nvcc not found")
    return found


def demangle(names: list[str]) -> list[str]:
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt:
        return names
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True).stdout
    return out.splitlines()


def report(arch: str) -> list[str]:
    """One line per instantiation: name, registers, stack, spill stores, spill loads."""
    table = "".join(f"    (void*)&{name},\n" for name in _cuda.name_expressions())
    source = _cuda.kernel_source() + "\nstatic void* const xentcy_instances[] = {\n" + table + "};\n"
    source += "void* xentcy_instance(int i) { return xentcy_instances[i]; }\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "instances.cu")
        with open(path, "w") as f:
            f.write(source)
        cmd = [nvcc(), "-std=c++17", "-ftz=true", f"-arch=sm_{arch}", "-c", "-Xptxas", "-v",
               "-o", os.path.join(tmp, "instances.o"), path]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(result.stdout + result.stderr)
    rows: dict[str, list[str]] = {}
    entry = None
    for line in (result.stdout + result.stderr).splitlines():
        if m := ENTRY.search(line):
            entry = m.group(1)
            rows[entry] = ["?", "?", "?", "?"]
        elif entry and (m := SPILL.search(line)):
            rows[entry][1:] = list(m.groups())
        elif entry and (m := USED.search(line)):
            rows[entry][0] = m.group(1)
    names = [name.removeprefix("void ").split("(")[0] for name in demangle(list(rows))]
    lines = [f"{name} | {' | '.join(values)}" for name, values in zip(names, rows.values(), strict=True)]
    return sorted(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="90")
    parser.add_argument("--out")
    args = parser.parse_args()
    text = f"sm_{args.arch}: kernel | registers | stack bytes | spill stores | spill loads\n"
    text += "\n".join(report(args.arch)) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
