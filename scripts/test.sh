#!/usr/bin/env bash
# Install what the tests need (idempotent), lint, then run the tests against real servers.
#
#   bash scripts/test.sh                          # the whole suite
#   bash scripts/test.sh tests/unit -x            # a subset; extra arguments go to pytest
#   bash scripts/test.sh -k guard                 # no path given: runs tests/ filtered by -k
#
# The lint (ruff, mypy and vulture, configured in pyproject.toml) runs first and every
# time, whatever subset of tests is asked for: it takes seconds, and a subset that passes
# must not hide a lint failure CI would stop on. A finding stops the script before any
# test runs. To iterate on a test without the lint, run pytest itself from the venv.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bootstrap
cd "$ROOT"

say "ruff check replicator tests scripts"
python -m ruff check replicator tests scripts || die "ruff: see above (ruff check --fix repairs some)"
say "mypy (replicator/; the pure core strict)"
python -m mypy || die "mypy: see above"
say "vulture (dead code in replicator/)"
python -m vulture || die "vulture: remove the dead code above, or name it in pyproject.toml's [tool.vulture] with why"

# Default to tests/ unless the arguments already name a path (tests/x.py, tests/x.py::test_y).
has_path=0
for arg in "$@"; do
  if [[ $arg != -* && -e ${arg%%::*} ]]; then has_path=1; fi
done
((has_path)) || set -- tests "$@"

# Two test files at a time, each file in one process (its module-scoped servers shared by
# its tests, as in a serial run): the machine has two cores, and most of a test's time is
# waiting for servers and sidecars, so the whole suite takes about 10 minutes instead of
# 15. Give -n yourself to choose (-n 0: one process, for a debugger or a focused run).
parallel=1
for arg in "$@"; do
  if [[ $arg == -n || $arg == -n* || $arg == --numprocesses* ]]; then parallel=0; fi
done
((parallel == 0)) || set -- -n 2 --dist loadfile "$@"

say "python -m pytest -q $*"
rc=0
python -m pytest -q "$@" || rc=$?
if ((rc == 5)); then
  # pytest's "no tests collected": a typo in a path or -k must not pass as green.
  die "pytest collected no tests (exit code 5)"
fi
exit "$rc"
