#!/usr/bin/env bash
# The documentation: docstring examples as doctests, the user guide's code, then the HTML
# built with warnings as errors (the examples gallery executed).  Installs what it needs into
# the active virtual environment.  Output: docs/_build/html.
#
#   bash .ci/docs.sh            (from the root of a clone, a venv active)
#
# fastxent is used as installed when `import fastxent` works (e.g. after `pip install .`, as
# in .ci/run); otherwise the extension is built in place and src/ put on the path.
set -euo pipefail
cd "$(dirname "$0")/.."

export KERAS_BACKEND=${KERAS_BACKEND:-numpy}
export PIP_DISABLE_PIP_VERSION_CHECK=1
export MPLBACKEND=Agg
export PYTHONWARNINGS=${PYTHONWARNINGS:-}
PY=${PYTHON:-python}
SECONDS=0

# The docs extra's packages, without reinstalling (rebuilding) fastxent itself.  Read from
# pyproject.toml so that the list has one home.
mapfile -t DEPS < <("$PY" - <<'PYEOF'
try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["optional-dependencies"]["docs"]))
PYEOF
)
"$PY" -m pip install -q "${DEPS[@]}"
echo "docs: dependencies installed after ${SECONDS}s"

# This checkout's in-place build when there is one; else an installed fastxent; else build
# in place now.
if ! ls src/fastxent/_kernels*.so >/dev/null 2>&1 \
        && ! (cd /tmp && "$PY" -c "import fastxent" 2>/dev/null); then
    "$PY" -m pip install -q "Cython>=3.0" "setuptools>=77" wheel
    "$PY" setup.py -q build_ext --inplace -j 2
    echo "docs: extension built in place after ${SECONDS}s"
fi
if ls src/fastxent/_kernels*.so >/dev/null 2>&1; then
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
(cd /tmp && "$PY" -c "import fastxent; print('docs: fastxent', fastxent.__version__, 'from', fastxent.__file__)")

# 1. Docstring examples (every public module; the optional dependencies are installed above).
"$PY" -m pytest -q -p no:cacheprovider --doctest-modules --pyargs fastxent
echo "docs: doctests passed after ${SECONDS}s"

# 2. The Python code blocks of the user-guide pages.
"$PY" docs/run_guide_code.py
echo "docs: user-guide code ran after ${SECONDS}s"

# 3. The HTML, warnings as errors; the gallery runs the examples (scaling_out.py excluded).
rm -rf docs/_build docs/api/generated docs/auto_examples
"$PY" -m sphinx -W --keep-going -q -b html docs docs/_build/html
echo "docs: HTML built in docs/_build/html after ${SECONDS}s"
