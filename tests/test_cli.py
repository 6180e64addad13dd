"""``python -m xentcy``: the demo prints the spec's worked example."""

import os
import re
import subprocess
import sys

import pytest

import xentcy

# The worked example's figures (spec/cross-entropy.md, Example).
SOFTMAX = [0.659, 0.242, 0.099, 0.073, 0.487, 0.440]
LOSSES = [1.417, 2.620]
MEAN = 2.019
GRADIENT = [0.330, -0.379, 0.049, -0.464, 0.243, 0.220]

# The spec rounds to 3 decimals and the demo may print more or fewer, so a
# printed figure may sit up to half a unit of either rounding away.
TOL = 6e-4
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+)(?:[eE][-+]?\d+)?")


def run_cli(cwd, *args):
    # Run the same xentcy the tests import, from a neutral directory.
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(xentcy.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root,
                                                      env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "xentcy", *args], capture_output=True,
                          text=True, timeout=120, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return run_cli(tmp_path_factory.mktemp("cli"), "demo")


def printed_numbers(text):
    return [float(s) for s in NUMBER.findall(text)]


def test_demo_exits_cleanly(demo):
    assert demo.returncode == 0, demo.stderr
    assert "Traceback" not in demo.stderr


@pytest.mark.parametrize("figure", SOFTMAX + LOSSES + [MEAN] + GRADIENT,
                         ids=[f"softmax{i}" for i in range(6)] + ["loss1", "loss2", "mean"]
                         + [f"grad{i}" for i in range(6)])
def test_demo_prints_each_figure_of_the_worked_example(demo, figure):
    printed = printed_numbers(demo.stdout)
    assert any(abs(x - figure) < TOL for x in printed), (figure, demo.stdout)


@pytest.mark.parametrize("figures", [SOFTMAX, LOSSES, GRADIENT],
                         ids=["softmax", "losses", "gradient"])
def test_demo_prints_rows_in_sample_order(demo, figures):
    printed = iter(printed_numbers(demo.stdout))
    # Each figure is found after the previous one: a subsequence test.
    assert all(any(abs(x - f) < TOL for x in printed) for f in figures), demo.stdout


def test_help_lists_the_demo_command(tmp_path):
    result = run_cli(tmp_path, "--help")
    assert result.returncode == 0, result.stderr
    assert re.search(r"\bdemo\b", result.stdout), result.stdout


def test_unknown_command_fails(tmp_path):
    result = run_cli(tmp_path, "no-such-command")
    assert result.returncode != 0
