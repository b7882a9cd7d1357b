#!/usr/bin/env bash
# The services some tests use, on a Debian/Ubuntu machine where we are root (CI): a PostgreSQL server with a
# tunelab_test database, and Chromium for the dashboard test. Idempotent. Without them those tests skip and say why.
set -euo pipefail
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "test-services: not root on Debian/Ubuntu; PostgreSQL and Chromium tests will skip unless you provide them" >&2
  exit 0
fi
need=()
command -v pg_ctlcluster >/dev/null || need+=(postgresql)
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null; }
fi
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
pg_lsclusters -h | grep -q "^$version main" || pg_createcluster "$version" main >/dev/null
pg_ctlcluster "$version" main start 2>/dev/null || true
for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 && break; sleep 0.5; done
su postgres -c "psql -q -tc \"SELECT 1 FROM pg_roles WHERE rolname='tunelab'\"" | grep -q 1 \
  || su postgres -c "psql -q -c \"CREATE ROLE tunelab LOGIN PASSWORD 'tunelab'\""
su postgres -c "psql -q -tc \"SELECT 1 FROM pg_database WHERE datname='tunelab_test'\"" | grep -q 1 \
  || su postgres -c "createdb -O tunelab tunelab_test"
echo "test-services: PostgreSQL $version on 127.0.0.1:5432 (database tunelab_test), Chromium at /usr/bin/chromium" >&2
