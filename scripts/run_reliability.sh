#!/usr/bin/env bash
# The reliability battery (RELIABILITY.md), slow cases included, then a table of the results.
#
#   scripts/run_reliability.sh            # tests/reliability + the concurrency test
#   scripts/run_reliability.sh -k resume  # extra pytest arguments are passed on
#
# Fast cases also run in CI (`make test`); the slow ones (`@pytest.mark.slow`) only here.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
report=$(mktemp --suffix=.xml)
trap 'rm -f "$report"' EXIT

OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$PYTHON" -m pytest -p no:cacheprovider -q -m "" \
    --junitxml="$report" tests/reliability tests/integration/test_concurrent_participants.py "$@"
status=$?

"$PYTHON" - "$report" <<'PY'
"""Print one row per test case: module, case, result, seconds."""
import sys
import xml.etree.ElementTree as ET

rows = []
for case in ET.parse(sys.argv[1]).iter("testcase"):
    outcome = "pass"
    for tag in ("failure", "error", "skipped"):
        if case.find(tag) is not None:
            outcome = {"failure": "FAIL", "error": "ERROR", "skipped": "skip"}[tag]
    module = case.get("classname", "").rsplit(".", 1)[-1]
    rows.append((module, case.get("name", ""), outcome, float(case.get("time", 0))))
width = max((len(f"{m}::{n}") for m, n, _, _ in rows), default=10)
print(f"\n{'case':<{width}}  result  seconds")
for module, name, outcome, seconds in rows:
    print(f"{module + '::' + name:<{width}}  {outcome:<6}  {seconds:7.1f}")
counts = {o: sum(r[2] == o for r in rows) for o in ("pass", "FAIL", "ERROR", "skip")}
print(f"\n{len(rows)} cases: " + ", ".join(f"{n} {o}" for o, n in counts.items() if n)
      + f"; {sum(r[3] for r in rows):.0f} s in tests")
PY
exit $status
