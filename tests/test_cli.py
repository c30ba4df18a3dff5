"""``python -m fastxent``: the configuration, the quick table and its argument handling."""

import os
import subprocess
import sys

import pytest

import fastxent
from fastxent import __main__ as cli

# the directory this test process imports fastxent from (src/ with an in-place build, the
# virtual environment's site-packages when installed): the subprocess imports the same one
IMPORT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastxent.__file__)))


def test_unknown_argument_is_an_error(capsys):
    assert cli.main(["foo"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("usage: python -m fastxent")
    assert "unrecognized arguments: foo" in captured.err


def test_unknown_argument_exit_status_of_the_module():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [IMPORT_ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.run([sys.executable, "-m", "fastxent", "foo"], capture_output=True,
                          text=True, env=env, check=False)
    assert proc.returncode == 2
    assert proc.stdout == "" and proc.stderr.startswith("usage: python -m fastxent")


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help(flag, capsys):
    assert cli.main([flag]) == 0
    assert capsys.readouterr().out.startswith("usage: python -m fastxent")


def test_quick_table_has_the_small_sizes(monkeypatch):
    monkeypatch.setattr(cli, "_best_time", lambda fn: (fn(), 1e-3)[1])
    rows = cli.quick_table().splitlines()[2:]
    assert [r.split("|")[1].strip() for r in rows] == [
        "32 x 10", "256 x 100", "4096 x 10", "4096 x 1000", "256 x 32000"]
