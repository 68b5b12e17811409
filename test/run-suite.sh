#!/usr/bin/env bash
# The whole suite, as `npm test` and CI run it, then a summary of failures and the slowest files
# (test/summary.mjs) as the last lines, whatever failed.
#
# Two lanes side by side, each running its files one at a time. The training lane: the files that
# train many runs (and pack.test.ts, which rebuilds dist/ through `npm pack`: nothing else may run
# while it writes there). The second lane: the files that need no training run or only a few,
# most of their time spent waiting on processes (the lab daemon, HTTP, ssh, the clients), then
# the Python tests. Every test is built to pass on a loaded machine (no test depends on an idle
# one), so a lane slows the other a little and the suite ends minutes sooner. The second lane's
# output is printed once the training lane ends.
#
#   npm test                  both lanes, then the summary
#   npm test -- FILTER...     only the vitest files matching the filters (one lane), then Python
set -uo pipefail
cd "$(dirname "$0")/.."
# One OpenMP thread per process (the server and the Python tests pass it on to every run). With
# PyTorch's default of a thread per core, a run whose threads share the cores with another busy
# process waits at each parallel region for a descheduled thread: smoke steps of 1 s instead of
# 15-20 ms, and runs over budget (bench/load_stalls.py: under another torch process, 18 steps in
# the 3 s budget against 183 with one thread; under two `yes`, 48 against 163; idle, 212 against
# 178). The lanes and any other load on the machine then slow runs evenly instead of stalling them.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
out=test-output
mkdir -p "$out"
rm -f "$out"/vitest*.json "$out/pytest.xml" "$out/rest.log" "$out"/*.status

vitest() { npx vitest run --reporter=default --reporter=json --outputFile.json="$out/$1" "${@:2}"; }

if [ "$#" -gt 0 ]; then
  vitest vitest.json "$@"
  training=$?
  rest=0
  bash test/python-tests.sh --junitxml="$out/pytest.xml"
  pytest=$?
else
  training_files=(test/record.e2e.test.ts test/redteam.e2e.test.ts test/loop.e2e.test.ts
    test/parallel.e2e.test.ts test/agent.e2e.test.ts test/server.e2e.test.ts test/pack.test.ts)
  excluded=()
  for f in "${training_files[@]}"; do excluded+=(--exclude "$f"); done
  # Both lanes at the same priority: with one thread per run they slow each other evenly. (At nice
  # 10 this lane got a tenth of a core on a machine that other work loads, and a test's own
  # timeout ran out in its set-up.)
  ( vitest vitest-rest.json "${excluded[@]}"
    echo $? > "$out/rest.status"
    bash test/python-tests.sh --junitxml="$out/pytest.xml"
    echo $? > "$out/pytest.status" ) > "$out/rest.log" 2>&1 &
  lane=$!
  vitest vitest-training.json "${training_files[@]}"
  training=$?
  wait "$lane"
  echo
  echo "=== the second lane: the other vitest files, then the Python tests ==="
  cat "$out/rest.log"
  rest=$(cat "$out/rest.status" 2>/dev/null || echo 1)
  pytest=$(cat "$out/pytest.status" 2>/dev/null || echo 1)
fi
node test/summary.mjs "$out"
[ "$training" -eq 0 ] && [ "$rest" -eq 0 ] && [ "$pytest" -eq 0 ]
