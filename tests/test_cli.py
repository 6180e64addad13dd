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


# --- python -m xentcy eval ---------------------------------------------------------

import json  # noqa: E402

import numpy as np  # noqa: E402


@pytest.fixture(scope="module")
def eval_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    gen = np.random.default_rng(0)
    A = gen.standard_normal((3000, 40)).astype(np.float32)
    y = gen.integers(0, 40, 3000)
    y[::13] = -100
    np.save(d / "logits.npy", A)
    np.save(d / "labels.npy", y)
    np.savez(d / "run.npz", logits=A, labels=y)
    np.savez_compressed(d / "packed.npz", logits=A, labels=y)
    np.save(d / "ints.npy", y.reshape(-1, 1).repeat(40, axis=1))
    np.save(d / "short.npy", y[:10])
    bad = y.copy()
    bad[5] = 40
    np.save(d / "bad.npy", bad)
    (d / "junk.npy").write_bytes(b"not an npy file")
    return d, A, y


def test_eval_json_equals_evaluate(eval_files):
    d, A, y = eval_files
    run = run_cli(d, "eval", "logits.npy", "labels.npy", "--top-k", "1", "3", "--batch-size", "700", "--json")
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""  # no progress bar off a terminal
    out = json.loads(run.stdout)
    want = xentcy.evaluate(A, y, top_k=(1, 3))
    assert out["count"] == want.count
    assert out["correct"] == {str(k): v for k, v in want.correct.items()}
    assert out["loss"] == pytest.approx(want.loss, rel=1e-12)
    assert out["entropy"] == pytest.approx(want.entropy, rel=1e-12)
    assert out["perplexity"] == pytest.approx(want.perplexity, rel=1e-12)


@pytest.mark.parametrize("archive", ["run.npz", "packed.npz"])
def test_eval_reads_npz_members(eval_files, archive):
    d, A, y = eval_files
    run = run_cli(d, "eval", f"{archive}:logits", f"{archive}:labels", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["count"] == xentcy.evaluate(A, y).count


def test_eval_prints_a_table(eval_files):
    d, A, y = eval_files
    run = run_cli(d, "eval", "logits.npy", "labels.npy", "--threads", "1")
    assert run.returncode == 0, run.stderr
    want = xentcy.evaluate(A, y)
    for label in ("rows counted", "loss (mean)", "perplexity", "top-1 accuracy", "top-5 accuracy", "entropy"):
        assert label in run.stdout
    assert f"{want.loss:.4f}" in run.stdout and str(want.count) in run.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("missing.npy", "labels.npy"), "no such file"),
        (("logits.npy", "short.npy"), "shape"),
        (("ints.npy", "labels.npy"), "float"),
        (("logits.npy", "bad.npy"), "class ind"),
        (("run.npz:nothing", "labels.npy"), "no member"),
        (("run.npz", "labels.npy"), "member"),
        (("junk.npy", "labels.npy"), "cannot read"),
        (("logits.npy", "labels.npy", "--top-k", "0"), "top_k"),
        (("logits.npy", "labels.npy", "--batch-size", "0"), "batch_size"),
        (("logits.npy", "labels.npy", "--label-smoothing", "2"), "smoothing"),
        (("logits.npy", "labels.npy", "--axis", "5"), "axis"),
        (("logits.npy", "labels.npy", "--threads", "0"), "threads"),
    ],
)
def test_eval_bad_input_is_one_line_and_status_2(eval_files, args, message):
    d, _, _ = eval_files
    run = run_cli(d, "eval", *args)
    assert run.returncode == 2, (run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert message in lines[0].lower() or message in lines[0], lines[0]


def test_eval_help_documents_every_option(tmp_path):
    run = run_cli(tmp_path, "eval", "--help")
    assert run.returncode == 0
    for option in ("--axis", "--top-k", "--ignore-index", "--label-smoothing", "--batch-size", "--device",
                   "--threads", "--json", ".npz:", "example"):
        assert option in run.stdout


def test_eval_with_reference_logits(eval_files):
    d, A, y = eval_files
    ref = A + np.random.default_rng(4).standard_normal(A.shape).astype(np.float32)
    np.save(d / "reference.npy", ref)
    run = run_cli(d, "eval", "logits.npy", "labels.npy", "--reference", "reference.npy", "--json")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    want = xentcy.evaluate(A, y, reference=ref)
    assert out["kl_divergence"] == pytest.approx(want.kl_divergence, rel=1e-12)
    assert out["top1_agreement"] == want.top1_agreement
    bad = run_cli(d, "eval", "logits.npy", "labels.npy", "--reference", "labels.npy")
    assert bad.returncode == 2 and "reference" in bad.stderr
