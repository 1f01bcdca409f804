#!/usr/bin/env bash
# `make test`: the suite on TEST_WORKERS pytest-xdist workers (default 2, the CI machine's cores),
# then the tests marked `exclusive` on their own. Most integration tests wait on process starts
# (Ray, vLLM engines, Serve, Ray Train workers), so two at a time finish the suite about 1.5x
# sooner on 2 cores; the exclusive ones (both HTTP apps' schema fuzz, the hostile requests and the
# request deadlines) time every answer, and a neighbour's engine start would make them measure the
# neighbour. Extra pytest arguments go to both phases; a phase that selects nothing is not an error.
# TEST_WORKERS=0 runs everything in one process, in one phase.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${VENV:-.venv}/bin/python
WORKERS=${TEST_WORKERS:-2}

if [ "$WORKERS" = "0" ]; then
  exec "$PY" -m pytest "$@"
fi
"$PY" -m pytest -n "$WORKERS" --dist loadfile -m "not exclusive" "$@"
first=$?
"$PY" -m pytest -m exclusive "$@"
second=$?
# pytest's 5: "no tests collected" (e.g. a single unit test file named in the arguments)
[ "$first" = 5 ] && first=0
[ "$second" = 5 ] && second=0
[ "$first" = 0 ] && [ "$second" = 0 ] && exit 0
echo "[test] failed: parallel phase rc $first, exclusive phase rc $second" >&2
exit 1
