#!/usr/bin/env bash
# User-space instructions per proxied request, gateway vs nginx, counted by
# valgrind's callgrind: unlike CPU time on a shared VM, the count repeats
# from run to run, so it shows what a change to the request path costs.
#
# Both proxies run under callgrind with the same three echo backends and the
# same settings as benches/proxy.sh (round robin, keep-alive, access log off);
# wrk warms up, the counters are zeroed, wrk runs DURATION, the counters are
# dumped; instructions ÷ completed requests is printed. Kernel work (the TCP
# stack) is not counted: strace shows both proxies make the same two
# recv/writev pairs per request.
#
# With ROUTED=1 the gateway routes through pools and routes: nine routes
# (hosts, prefixes, methods) that the benchmark's requests do not match,
# then a catch-all to the pool; the table is walked on every request.
#
# Usage: benches/proxy_instructions.sh   (DURATION [8s], SKIP_BUILD [0],
#        ROUTED [0], GATEWAY_BIN, BASE_PORT [9001], PORT [18090]); needs
#        valgrind, wrk, and nginx for the reference (skipped when missing).
#        Loopback only.

set -euo pipefail

DURATION=${DURATION:-8s}
BASE_PORT=${BASE_PORT:-9001}
PORT=${PORT:-18090}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=benches/nginx_conf.sh
source "$ROOT/benches/nginx_conf.sh"
GATEWAY_BIN=${GATEWAY_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/gateway}
unset GATEWAY_CONFIG GATEWAY_LISTEN GATEWAY_BACKENDS GATEWAY_LOG_FORMAT GATEWAY_ADMIN_LISTEN

for tool in valgrind callgrind_control wrk curl; do
    command -v "$tool" >/dev/null || {
        echo "error: $tool is required" >&2
        exit 1
    }
done
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    (cd "$ROOT" && cargo build --release -p gateway)
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/gateway-instr.XXXXXX")
chmod 755 "$TMP"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

wait_port() {
    local i
    for ((i = 0; i < 600; i++)); do
        curl -fs -o /dev/null "http://127.0.0.1:$1/" && return 0
        sleep 0.1
    done
    echo "error: nothing answers on port $1" >&2
    exit 1
}

cat >"$TMP/backends.yaml" <<EOF
listen: 127.0.0.1:$PORT
admin:
  listen: 127.0.0.1:$((PORT + 1))
log:
  level: warn
  access: false
EOF
"$GATEWAY_BIN" demo --backends-only --backends 3 --base-port "$BASE_PORT" -c "$TMP/backends.yaml" \
    >"$TMP/backends.log" 2>&1 &
PIDS+=($!)
wait_port "$BASE_PORT"

{
    echo "listen: 127.0.0.1:$PORT"
    if [[ ${ROUTED:-0} == 1 ]]; then
        cat <<EOF
pools:
  main:
    backends:
      - http://127.0.0.1:$BASE_PORT
      - http://127.0.0.1:$((BASE_PORT + 1))
      - http://127.0.0.1:$((BASE_PORT + 2))
    health_check:
      enabled: false
routes:
EOF
        for i in 1 2 3; do
            echo "  - {match: {host: api-$i.example.com, path_prefix: /v$i}, pool: main}"
            echo "  - {match: {host: \"*.cdn$i.example.com\"}, pool: main}"
            echo "  - {match: {path_prefix: /admin$i, methods: [POST]}, pool: main}"
        done
        echo "  - {match: {path_prefix: /}, pool: main}"
    else
        cat <<EOF
backends:
  - http://127.0.0.1:$BASE_PORT
  - http://127.0.0.1:$((BASE_PORT + 1))
  - http://127.0.0.1:$((BASE_PORT + 2))
health_check:
  enabled: false
EOF
    fi
    cat <<EOF
proxy:
  workers: 1
admin:
  listen: 127.0.0.1:$((PORT + 1))
log:
  level: warn
  access: false
EOF
} >"$TMP/gateway.yaml"

mkdir -p "$TMP/nginx/logs" "$TMP/nginx/tmp"
nginx_conf "$TMP/nginx" "$PORT" "$BASE_PORT" 3 $'master_process off;\ndaemon off;' >"$TMP/nginx/nginx.conf"

# measure LABEL COMMAND...: prints instructions per request of COMMAND.
measure() {
    local label=$1
    shift
    valgrind --tool=callgrind --callgrind-out-file="$TMP/$label.%p" "$@" >"$TMP/$label.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_port "$PORT"
    wrk -t1 -c64 -d3s "http://127.0.0.1:$PORT/" >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1
    local out requests instructions
    out=$(wrk -t1 -c64 -d"$DURATION" "http://127.0.0.1:$PORT/")
    callgrind_control -d "$pid" >/dev/null 2>&1
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    instructions=$(awk '/^summary:/ {print $2}' "$TMP/$label".*.1)
    echo "$label $requests $instructions"
}

results=$(measure gateway "$GATEWAY_BIN" run -c "$TMP/gateway.yaml")
NGINX_BIN=$(command -v nginx || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; } || true)
if [[ -n $NGINX_BIN ]]; then
    results+=$'\n'$(measure nginx "$NGINX_BIN" -p "$TMP/nginx" -e "$TMP/nginx/logs/error.log" -c "$TMP/nginx/nginx.conf")
fi

echo
echo "| Proxy | Requests counted | Instructions per request (user space) |"
echo "| --- | ---: | ---: |"
awk '{printf "| %s | %d | %d |\n", $1, $2, $3 / $2; per[$1] = $3 / $2}
     END {if ("nginx" in per) printf "\ngateway ÷ nginx: %.2f×\n", per["gateway"] / per["nginx"]}' <<<"$results"
