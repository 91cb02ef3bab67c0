#!/usr/bin/env bash
# The Debian packages the test suite drives as real parts, installed if missing (idempotent):
# PostgreSQL (the ledger tests run on it too; started and given a packline role and database),
# Chromium (the browser tests) and nginx (two api and two notifier instances behind it; the
# tests start it as a plain process, never as the system service), Node.js and npm (the AsyncAPI
# validator). Needs root; `make test` runs it. With `--bench`, only what the benchmarks drive
# instead: wrk (`make bench-api`).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
if [ "${1:-}" = --bench ]; then
  command -v wrk >/dev/null || missing+=(wrk)
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  exit 0
fi
command -v pg_ctlcluster >/dev/null || missing+=(postgresql)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v npm >/dev/null || missing+=(nodejs npm)  # the AsyncAPI parser (make asyncapi-parser)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  if [[ " ${missing[*]} " == *" nginx "* ]]; then
    # Only the binary is wanted: the package's own service is not used.
    if command -v systemctl >/dev/null; then systemctl disable --now nginx >/dev/null 2>&1 || true; fi
    service nginx stop >/dev/null 2>&1 || true
  fi
fi
deploy/postgres-setup.sh
