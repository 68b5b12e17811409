#!/usr/bin/env bash
# Runs the Python suite with the interpreter the server itself would pick (one that imports torch).
set -euo pipefail
cd "$(dirname "$0")/.."
python=$(node dist/cli.js doctor | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).path))')
echo "python tests with $python" >&2
exec "$python" -m pytest -q python/tests "$@"
