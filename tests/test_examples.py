"""Run each script in examples/ as a user would and check what it prints."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_example(name, timeout=120):
    env = dict(os.environ)  # PYTHONPATH (the in-place build) is inherited
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=EXAMPLES.parent,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _number(pattern, text):
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not found in:\n{text}"
    return float(match.group(1))


def test_mlp_digits():
    pytest.importorskip("sklearn")
    out = run_example("mlp_digits.py")
    assert _number(r"test accuracy: ([0-9.]+)", out) >= 0.95
    _number(r"training time: ([0-9.]+) s", out)  # reported; timings are never asserted
    losses = [float(v) for v in re.findall(r"train loss ([0-9.]+)", out)]
    assert len(losses) >= 2 and losses[-1] < losses[0] / 10


def test_lm_loss_padding():
    out = run_example("lm_loss_padding.py")
    assert _number(r"max abs loss diff: ([0-9.e+-]+)", out) < 1e-5
    assert _number(r"max abs grad diff: ([0-9.e+-]+)", out) < 1e-7
    assert "padding gradient is zero: True" in out
    assert "zero at padding: True" in out
    start, end, optimum = (
        float(v) for v in re.search(
            r"bigram LM: loss ([0-9.]+) -> ([0-9.]+) \(optimum ([0-9.]+)\)", out).groups()
    )
    assert end < start and abs(end - optimum) < 0.05
    assert out.rstrip().endswith("result: OK")


def test_scaling_out_readme_example():
    """The Dask guide's cluster example (examples/scaling_out.py), run as written."""
    pytest.importorskip("distributed")
    pytest.importorskip("sklearn")
    out = run_example("scaling_out.py", timeout=600)
    loss = _number(r"mean loss over non-padding rows: ([0-9.]+)", out)
    # the value docs/guide/dask.md and the example's docstring show (seeded data)
    assert abs(loss - 5.0969) < 5e-4
    assert "equal to NumPy: True" in out
    assert _number(r"accuracy ([0-9.]+)", out) >= 0.99


def test_validation_metrics():
    out = run_example("validation_metrics.py")
    assert "metric equals one call: True" in out
    wrong = _number(r"mean of batch means \(wrong\): +([0-9.]+)", out)
    right = _number(r"validation loss \(one call\): +([0-9.]+)", out)
    assert abs(wrong - right) > 1e-3  # unequal batches: the mean of means is off
    assert _number(r"perplexity \(streamed\): ([0-9.]+)", out) == pytest.approx(
        _number(r"perplexity \(exact\): +([0-9.]+)", out), rel=1e-4)
    assert out.rstrip().endswith("result: OK")


def _readme_blocks():
    """The README's ```python blocks, each with the ``` block after it when the text between
    them is "prints" (the output the README shows)."""
    text = (ROOT / "README.md").read_text()
    blocks = []
    for m in re.finditer(r"^```python\n(.*?)^```\n", text, re.S | re.M):
        shown = re.match(r"\s*prints\s*\n+```\n(.*?)^```", text[m.end():], re.S | re.M)
        blocks.append((m.group(1), shown.group(1) if shown else None))
    return blocks


def test_readme_code_blocks_run_and_print_what_the_readme_shows():
    blocks = _readme_blocks()
    assert len(blocks) >= 2  # the first loss and the quick start
    assert any(shown for _, shown in blocks), "the quick start's output is shown"
    for code, shown in blocks:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=120, env=dict(os.environ), cwd=ROOT)
        assert proc.returncode == 0, f"README block failed:\n{code}\n{proc.stderr}"
        if shown is not None:
            assert proc.stdout == shown, f"README shows {shown!r}, the code prints {proc.stdout!r}"


def test_readme_commands():
    # .ci/run runs the README's commands: keep them as CI runs them
    text = (ROOT / "README.md").read_text()
    assert "pip install '.[test]' && pytest" in text
    assert "pip install . && python -m fastxent" in text
    assert "fastxent[" not in text  # not on a package index: extras install from a clone


def test_torch_training():
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    out = run_example("torch_training.py")
    assert _number(r"max abs gradient difference: ([0-9.e+-]+)", out) < 1e-6
    ours, theirs = (float(v) for v in re.search(
        r"loss: fastxent ([0-9.]+), PyTorch ([0-9.]+)", out).groups())
    assert abs(ours - theirs) < 1e-5
    accuracies = [float(v) for v in re.findall(r"test accuracy: ([0-9.]+)", out)]
    assert len(accuracies) == 2 and min(accuracies) >= 0.95
    losses = [float(v) for v in re.findall(r"train loss ([0-9.]+)", out)]
    assert len(losses) >= 4 and losses[-1] < losses[0] / 2
