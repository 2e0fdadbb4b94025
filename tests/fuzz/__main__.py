"""`python -m tests.fuzz` from the repository root (docs/fuzzing.md)."""

import os
import sys

# The harness and tests/reference.py import as top-level modules, as under pytest.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
