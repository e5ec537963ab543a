#!/usr/bin/env bash
# Install what the tests need (idempotent), then run them against real servers.
#
#   bash scripts/test.sh                          # the whole suite
#   bash scripts/test.sh tests/unit -x            # a subset; extra arguments go to pytest
#   bash scripts/test.sh -k guard                 # no path given: runs tests/ filtered by -k
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bootstrap
cd "$ROOT"

# Default to tests/ unless the arguments already name a path (tests/x.py, tests/x.py::test_y).
has_path=0
for arg in "$@"; do
  if [[ $arg != -* && -e ${arg%%::*} ]]; then has_path=1; fi
done
((has_path)) || set -- tests "$@"

say "python -m pytest -q $*"
rc=0
python -m pytest -q "$@" || rc=$?
if ((rc == 5)); then
  # pytest's "no tests collected": a typo in a path or -k must not pass as green.
  die "pytest collected no tests (exit code 5)"
fi
exit "$rc"
