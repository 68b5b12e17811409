#!/usr/bin/env bash
# How long a new user waits for the Python environment: python/setup-venv.sh into a fresh folder,
# timed, with the size it takes. Writes bench/results-setup-python-<host>.json.
#   bash bench/setup-python.sh          (PYTHON=..., AUTORESEARCH_TORCH=... and pip's settings apply)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$(mktemp -d -t ar-setup-python.XXXXXX)"
trap 'rm -rf "$dir"' EXIT
start=$(date +%s.%N)
bash "$root/python/setup-venv.sh" "$dir/venv"
seconds=$(echo "$(date +%s.%N) - $start" | bc)
versions=$("$dir/venv/bin/python" -c 'import json, sys, torch, numpy; print(json.dumps({"python": sys.version.split()[0], "torch": torch.__version__, "numpy": numpy.__version__}))')
out="$root/bench/results-setup-python-$(hostname).json"
cat > "$out" <<JSON
{
  "benchmark": "python/setup-venv.sh into a fresh folder",
  "machine": "$(hostname) ($(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))",
  "date": "$(date -u +%FT%TZ)",
  "base_python": "${PYTHON:-python3}",
  "seconds": $(printf '%.1f' "$seconds"),
  "size_mb": $(du -sm "$dir/venv" | cut -f1),
  "installed": $versions
}
JSON
cat "$out"
