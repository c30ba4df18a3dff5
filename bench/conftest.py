"""pytest configuration of the benchmark suite (``pytest bench/ --benchmark-only``).

The suite's files are named ``bench_*.py`` so that pytest's default ``test_*.py`` pattern
never picks them up; this hook collects them when pytest is pointed at ``bench/``.  The main
test run does not come here at all (``testpaths = ["tests"]`` in pyproject.toml).
"""

import pytest


def pytest_collect_file(file_path, parent):
    if file_path.suffix != ".py" or not file_path.name.startswith("bench_"):
        return None
    if parent.session.isinitpath(file_path):
        return None  # named on the command line: pytest's own collector takes it
    return pytest.Module.from_parent(parent, path=file_path)
