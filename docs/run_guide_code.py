"""Run the Python code blocks of the documentation's Markdown pages (.ci/docs.sh runs this).

Each page's ```python blocks run in order in one namespace, as a reader would paste them;
any exception fails the run.  Pages whose code imports a package that is not installed fail
too: the docs extra installs everything they need.
"""

from __future__ import annotations

import re
import sys
import time
import traceback
from pathlib import Path

DOCS = Path(__file__).resolve().parent
SKIP_DIRS = {"_build", "auto_examples", "generated", "_generated"}
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def pages():
    for path in sorted(DOCS.rglob("*.md")):
        if not SKIP_DIRS.intersection(path.relative_to(DOCS).parts):
            yield path


def main() -> int:
    failed = 0
    for path in pages():
        blocks = BLOCK.findall(path.read_text())
        if not blocks:
            continue
        namespace = {"__name__": "__main__"}
        start = time.perf_counter()
        for i, code in enumerate(blocks, 1):
            try:
                exec(compile(code, f"{path.relative_to(DOCS)}[block {i}]", "exec"), namespace)
            except Exception:  # noqa: BLE001 - report every page
                traceback.print_exc()
                print(f"FAILED: {path.relative_to(DOCS)}, code block {i}", file=sys.stderr)
                failed += 1
                break
        print(f"{path.relative_to(DOCS)}: {len(blocks)} block(s), "
              f"{time.perf_counter() - start:.1f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
