"""Worker process of ``python -m fastxent bench`` (started by the benchmark, not by users).

``python -m fastxent.bench._worker``: answers one JSON line on stdout per JSON request read
from stdin (see ``fastxent.bench.timing.Handler``) until stdin ends.
``python -m fastxent.bench._worker linear-memory VARIANT N D V THREADS SEED``: one call of a
fused linear + cross-entropy variant, its peak memory as JSON (``fastxent.bench.linear``).
"""

import json
import os
import sys


def main(argv: list[str]) -> int:
    """Serve requests (no arguments) or measure one linear variant's memory."""
    if argv[:1] == ["linear-memory"]:
        from fastxent.bench.linear import memory_child

        return memory_child(argv[1:])
    from fastxent.bench.timing import Handler

    # Answers go to the original stdout; anything a library prints goes to stderr.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    handler = Handler()
    for line in sys.stdin:
        answers.write(json.dumps(handler.handle(json.loads(line))) + "\n")
        answers.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
