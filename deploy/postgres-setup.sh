#!/usr/bin/env bash
# Install (Debian) and start a local PostgreSQL for the ledger tests, idempotently.
# The suite finds it at PACKLINE_TEST_POSTGRES_URL (default below).
set -euo pipefail
if ! command -v pg_ctlcluster >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
pg_lsclusters -h | grep -q "^$version main" || pg_createcluster "$version" main >/dev/null
pg_ctlcluster "$version" main start 2>/dev/null || true
for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 && break; sleep 1; done
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='packline'\"" | grep -q 1 ||
  su postgres -c "psql -qc \"CREATE ROLE packline LOGIN CREATEDB PASSWORD 'packline'\""
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='packline'\"" | grep -q 1 ||
  su postgres -c "createdb -O packline packline"
echo "postgresql ready: postgresql+psycopg://packline:packline@127.0.0.1:5432/packline"
