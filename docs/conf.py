"""Sphinx configuration for the fastxent documentation (built by .ci/docs.sh)."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The in-place build (python setup.py build_ext --inplace) when there is one, else the
# installed fastxent.
if list((ROOT / "src" / "fastxent").glob("_kernels*.so")):
    sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("KERAS_BACKEND", "numpy")

import fastxent  # noqa: E402

project = "fastxent"
author = "the fastxent authors"
copyright = "the fastxent authors, BSD-3-Clause"  # noqa: A001
release = fastxent.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": False}
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable/", None),
}
# The build must not need the network: intersphinx inventories are optional.
if os.environ.get("FASTXENT_DOCS_OFFLINE", "1") == "1":
    intersphinx_mapping = {}

html_theme = "pydata_sphinx_theme"
html_title = f"fastxent {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}

# -- examples gallery ------------------------------------------------------------------------
# Every example runs at build time except scaling_out.py: it starts a two-process
# distributed.LocalCluster and works on 800 MB of logits (minutes on two cores); it is shown
# with its code, and tests/test_examples.py runs it.
sphinx_gallery_conf = {
    "examples_dirs": [str(ROOT / "examples")],
    "gallery_dirs": ["auto_examples"],
    "filename_pattern": r"^((?!scaling_out).)*$",
    "ignore_pattern": r"__init__\.py",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "min_reported_time": 1,
    "plot_gallery": "True",
}

# -- the bandwidth plot of the performance page ----------------------------------------------
# Drawn at build time from the committed measurements (bench/results/fastxent_bench.json,
# written by `python -m fastxent bench`), with the benchmark's own plotting code.


def _bandwidth_plot(app):
    import json

    from fastxent.bench.plot import write_plot

    result = json.loads((ROOT / "bench" / "results" / "fastxent_bench.json").read_text())
    out = Path(app.srcdir) / "_generated"
    out.mkdir(exist_ok=True)
    machine = result["machine"]
    title = (f"sparse loss + gradient, 32 MiB of float32 logits; {machine['cpu']}, "
             f"{machine['threads']} threads, measured {machine['date'][:10]}")
    if not write_plot(result["plot"], str(out / "bandwidth.png"), title):
        raise RuntimeError("the documentation needs matplotlib for the bandwidth plot")


def setup(app):
    app.connect("builder-inited", _bandwidth_plot)
