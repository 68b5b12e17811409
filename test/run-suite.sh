#!/usr/bin/env bash
# The whole suite, as `npm test` and CI run it: vitest, then the Python tests, then a summary of
# failures and the slowest files (test/summary.mjs) as the last lines, whatever failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=test-output
rm -f "$out/vitest.json" "$out/pytest.xml"
mkdir -p "$out"
npx vitest run --reporter=default --reporter=json --outputFile.json="$out/vitest.json" "$@"
vitest=$?
bash test/python-tests.sh --junitxml="$out/pytest.xml"
pytest=$?
node test/summary.mjs "$out"
[ "$vitest" -eq 0 ] && [ "$pytest" -eq 0 ]
