#!/usr/bin/env bash
# Stops the test run at once, naming the Debian package, when a system program the tests need is
# missing: better than a test failing twenty minutes later with a confusing error.
set -uo pipefail
missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$2 (for $1)"); }
need git git
need bwrap bubblewrap
need chromium chromium
[ -n "${CI:-}" ] && { [ -x /usr/sbin/sshd ] || missing+=("openssh-server (for /usr/sbin/sshd; CI runs the ssh route tests)"); }
if [ ${#missing[@]} -gt 0 ]; then
  echo "preflight: missing system packages: ${missing[*]}" >&2
  echo "preflight: install them with: apt-get install -y --no-install-recommends ${missing[*]%% *}" >&2
  exit 1
fi
