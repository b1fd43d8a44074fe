"""Run pytest, treating "no tests collected" (exit 5) as success so empty suites don't fail CI."""

from __future__ import annotations

import subprocess
import sys

NO_TESTS_COLLECTED = 5


def main() -> int:
    code = subprocess.call(sys.argv[1:])
    return 0 if code == NO_TESTS_COLLECTED else code


if __name__ == "__main__":
    raise SystemExit(main())
