#!/usr/bin/env bash
# Runs compose.yaml on this machine and checks what it promises: two
# gateways in front of three demo backends, sharing their buckets in Redis
# and their per-client limits in PostgreSQL. Host networking only, like
# scripts/docker-check.sh, which it runs first (dockerd, the debootstrap base
# image and the gateway:local image come from there).
#
# No image registry is reachable here, so the Redis and PostgreSQL images are
# stand-ins built on the same debootstrap base from Debian's packages
# (redis-server 7, postgresql 15 with an entrypoint that does what the
# official image's does with POSTGRES_PASSWORD and POSTGRES_DB); compose.yaml
# takes them through REDIS_IMAGE and POSTGRES_IMAGE. Everything else is
# compose.yaml as a user runs it (`docker-compose`, Debian's 1.29).
#
# Checked: both gateways answer and rotate over the three backends; a limit
# set for one client through gateway A's admin API applies at gateway B
# (PostgreSQL LISTEN/NOTIFY); that client gets exactly its capacity across
# both gateways (Redis); another client is unaffected.
#
# Usage: sudo scripts/compose-check.sh   (root: dockerd and debootstrap)
#   SKIP_IMAGE=1  reuse the gateway:local image docker-check.sh built before
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/var/tmp/gateway-docker}
mkdir -p "$WORK"
log() { printf '==> %s\n' "$*" >&2; }

if [ -z "${SKIP_IMAGE:-}" ] || ! docker image inspect gateway:local >/dev/null 2>&1; then
  scripts/docker-check.sh
fi

if ! docker image inspect gateway-redis:bookworm >/dev/null 2>&1; then
  log "building the Redis stand-in (Debian's redis-server)"
  mkdir -p "$WORK/redis"
  cat >"$WORK/redis/Dockerfile" <<'EOF'
FROM gateway-base:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/*
USER redis
EOF
  DOCKER_BUILDKIT=0 docker build -q --network host -t gateway-redis:bookworm "$WORK/redis" >/dev/null
fi

if ! docker image inspect gateway-postgres:bookworm >/dev/null 2>&1; then
  log "building the PostgreSQL stand-in (Debian's postgresql-15)"
  mkdir -p "$WORK/postgres"
  cat >"$WORK/postgres/entrypoint.sh" <<'EOF'
#!/bin/sh
# What the official image's entrypoint does with POSTGRES_PASSWORD and
# POSTGRES_DB on first start, then runs `postgres ARGS…` as user postgres.
set -eu
[ "${1:-}" = postgres ] && shift
export PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  echo "$POSTGRES_PASSWORD" >/tmp/pw
  initdb --username=postgres --pwfile=/tmp/pw --auth-host=scram-sha-256 --auth-local=trust >/dev/null
  rm -f /tmp/pw
  pg_ctl -o "-c listen_addresses='' -k /tmp" -w start >/dev/null
  psql -h /tmp -U postgres -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"${POSTGRES_DB:-postgres}\"" >/dev/null
  pg_ctl -w stop >/dev/null
fi
exec postgres -k /tmp "$@"
EOF
  chmod 755 "$WORK/postgres/entrypoint.sh"
  cat >"$WORK/postgres/Dockerfile" <<'EOF'
FROM gateway-base:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/postgresql/data && chown postgres /var/lib/postgresql/data
COPY entrypoint.sh /usr/local/bin/entrypoint.sh
USER postgres
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
EOF
  DOCKER_BUILDKIT=0 docker build -q --network host -t gateway-postgres:bookworm "$WORK/postgres" >/dev/null
fi

export REDIS_IMAGE=gateway-redis:bookworm POSTGRES_IMAGE=gateway-postgres:bookworm
GATEWAY_ADMIN_TOKEN=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
export GATEWAY_ADMIN_TOKEN
compose() { docker-compose -p gateway-check -f compose.yaml "$@"; }
trap 'compose logs --no-color >"$WORK/compose.log" 2>&1 || true; compose down -v >/dev/null 2>&1 || true' EXIT
log "docker-compose up"
compose up -d --no-build 2>&1 | sed 's/^/    /' >&2

wait_for() {
  for _ in $(seq 1 100); do curl -fs -o /dev/null "$@" && return 0; sleep 0.3; done
  echo "no answer from $1" >&2
  compose logs --no-color >&2
  return 1
}
wait_for http://127.0.0.1:8081/
wait_for http://127.0.0.1:8082/

backend_of() { curl -s "$@" | sed -n 's/.*"backend": *"\([^"]*\)".*/\1/p'; }
for port in 8081 8082; do
  seen=$(for _ in 1 2 3 4 5 6; do backend_of "http://127.0.0.1:$port/"; done | sort -u | tr '\n' ' ')
  echo "gateway on :$port rotates over: $seen"
  [ "$(wc -w <<<"$seen")" -eq 3 ]
done

auth=(-H "Authorization: Bearer $GATEWAY_ADMIN_TOKEN")
# PostgreSQL may come up after the gateways: they serve default limits and
# answer 503 on /clients until they have reached it and migrated it.
wait_for "http://127.0.0.1:9191/clients" "${auth[@]}"
wait_for "http://127.0.0.1:9192/clients" "${auth[@]}"
client=127.0.0.3
curl -fsS "${auth[@]}" -X POST -H 'Content-Type: application/json' \
  -d "{\"client_id\": \"$client\", \"capacity\": 4, \"refill_per_second\": 0.001}" \
  http://127.0.0.1:9191/clients >/dev/null
echo "limit set through gateway A: $client capacity 4"
seen_b=""
for _ in $(seq 1 50); do
  seen_b=$(curl -fs "${auth[@]}" "http://127.0.0.1:9192/clients/$client" || true)
  grep -q '"capacity": *4' <<<"$seen_b" && break
  sleep 0.1
done
echo "gateway B sees: $seen_b"
grep -q '"capacity": *4' <<<"$seen_b"
sleep 1 # gateway B applies it when PostgreSQL's NOTIFY arrives
codes=$(for port in 8081 8082 8081 8082 8081 8082 8081 8082; do
  curl -s -o /dev/null -w '%{http_code} ' --interface "$client" "http://127.0.0.1:$port/"
done)
echo "8 requests from $client, alternating gateways: $codes"
[ "$(grep -o 200 <<<"$codes" | wc -l)" -eq 4 ] && [ "$(grep -o 429 <<<"$codes" | wc -l)" -eq 4 ]
other=$(curl -s -o /dev/null -w '%{http_code}' --interface 127.0.0.2 http://127.0.0.1:8082/)
echo "another client (127.0.0.2) through gateway B: $other"
[ "$other" = 200 ]
echo "ok"
