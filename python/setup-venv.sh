#!/usr/bin/env bash
# Makes the Python environment the server uses when no --python is given: a venv at python/.venv
# (or the folder given as $1) with PyTorch, numpy and pytest. On Linux without an NVIDIA GPU it
# takes PyTorch's CPU build (a few hundred MB instead of several GB of CUDA libraries).
#
#   npm run setup:python                 # python/.venv, torch 2.13.0
#   bash python/setup-venv.sh DIR        # another folder
#   AUTORESEARCH_TORCH='torch==2.11.0' PYTHON=/opt/python3.12/bin/python3 npm run setup:python
#
# Safe to run again: a finished environment is left as it is, a half-made one (an install that
# was interrupted) is removed and made anew, and a folder it did not make is never touched.
# pip's own settings apply (PIP_INDEX_URL, a proxy, PIP_RETRIES / PIP_DEFAULT_TIMEOUT).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-$here/.venv}"
torch_spec="${AUTORESEARCH_TORCH:-torch==2.13.0}"
base="${PYTHON:-python3}"
partial="$venv/.autoresearch-partial"  # made first, removed last: this script made the folder and has not finished
say() { echo "setup-python: $*" >&2; }
usable() { "$venv/bin/python" -c 'import sys, numpy, torch; v = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(v < (2, 9))' 2>/dev/null; }

if [ -e "$venv" ] && usable; then
  rm -f "$partial"
  say "$venv is ready ($("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
  exit 0
fi
if [ -e "$partial" ]; then
  say "$venv was left half made by an earlier run: removing it and starting again"
  rm -rf "$venv"
elif [ -e "$venv" ]; then
  say "$venv exists but has no PyTorch 2.9+ with numpy, and this script did not make it: remove it, or give another folder (bash python/setup-venv.sh DIR)"
  exit 1
fi
command -v "$base" >/dev/null || { say "no $base found: install Python 3.10 or newer (Debian/Ubuntu: apt-get install -y python3 python3-venv), or name one with PYTHON=/path/to/python3"; exit 1; }
"$base" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { say "$base is Python $("$base" -c 'import platform; print(platform.python_version())'); PyTorch 2.9+ needs 3.10 or newer: name another with PYTHON=/path/to/python3"; exit 1; }
"$base" -m venv "$venv" || { rm -rf "$venv"; say "$base cannot make a venv (Debian/Ubuntu: apt-get install -y python3-venv)"; exit 1; }
touch "$partial"

extra=()
if [ "$(uname -s)" = Linux ] && ! command -v nvidia-smi >/dev/null; then
  extra=(--extra-index-url https://download.pytorch.org/whl/cpu)
fi
say "installing $torch_spec, numpy and pytest into $venv ${extra:+(CPU build)}"
start=$(date +%s)
"$venv/bin/python" -m pip install --disable-pip-version-check -q "${extra[@]}" "$torch_spec" numpy pytest \
  || { say "pip could not install $torch_spec (the messages above say why); nothing else was changed. Run this again once that is fixed."; exit 1; }
usable || { say "torch 2.9+ and numpy do not import in $venv (the messages above say why); run this again"; exit 1; }
rm -f "$partial"
say "ready in $(( $(date +%s) - start )) s: $("$venv/bin/python" -c 'import torch, numpy; print("torch", torch.__version__, "numpy", numpy.__version__)') at $venv/bin/python"
