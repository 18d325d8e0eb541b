#!/usr/bin/env bash
# Resident memory per idle keep-alive client connection, gateway vs nginx,
# in the same run.
#
# Each proxy (one worker, the same echo backend) gets CONNECTIONS client
# connections, opened 50 at a time; each sends one GET, reads the answer and
# then stays open and silent. The proxy's RSS before and after, divided by
# CONNECTIONS, is the cost of an idle connection. The gateway gives a
# connection's buffers and request state back after one second without a
# request, and its allocator returns the pages within its purge delay, so
# the figure is read once it has settled (up to SETTLE seconds).
#
# Usage: benches/idle_memory.sh   (CONNECTIONS [3000], SETTLE [20],
#        SKIP_BUILD [0], GATEWAY_BIN, BASE_PORT [9001], PORT [18090]);
#        needs python3, and nginx for the reference. Loopback only.

set -euo pipefail

CONNECTIONS=${CONNECTIONS:-3000}
SETTLE=${SETTLE:-20}
BASE_PORT=${BASE_PORT:-9001}
PORT=${PORT:-18090}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=benches/nginx_conf.sh
source "$ROOT/benches/nginx_conf.sh"
GATEWAY_BIN=${GATEWAY_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/gateway}
unset GATEWAY_CONFIG GATEWAY_LISTEN GATEWAY_BACKENDS GATEWAY_LOG_FORMAT GATEWAY_ADMIN_LISTEN

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    (cd "$ROOT" && cargo build --release -p gateway)
fi
ulimit -n $((CONNECTIONS * 2 + 1024))

TMP=$(mktemp -d "${TMPDIR:-/tmp}/gateway-idle.XXXXXX")
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
EOF
"$GATEWAY_BIN" demo --backends-only --backends 1 --base-port "$BASE_PORT" -c "$TMP/backends.yaml" \
    >"$TMP/backends.log" 2>&1 &
PIDS+=($!)
wait_port "$BASE_PORT"

cat >"$TMP/gateway.yaml" <<EOF
listen: 127.0.0.1:$PORT
backends:
  - http://127.0.0.1:$BASE_PORT
health_check:
  enabled: false
proxy:
  workers: 1
admin:
  listen: 127.0.0.1:$((PORT + 1))
log:
  level: warn
  access: false
EOF

mkdir -p "$TMP/nginx/logs" "$TMP/nginx/tmp"
nginx_conf "$TMP/nginx" "$PORT" "$BASE_PORT" 1 $'master_process off;\ndaemon off;' |
    sed "s/worker_connections 4096;/worker_connections $((CONNECTIONS + 1024));/" >"$TMP/nginx/nginx.conf"

# per_connection PID: opens the idle connections and prints bytes per connection.
per_connection() {
    python3 - "$1" "$PORT" "$CONNECTIONS" "$SETTLE" <<'PY'
import concurrent.futures, socket, sys, time
pid, port, n, settle = (int(a) for a in sys.argv[1:])
def rss():
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS"))
def one(_):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
    s.recv(65536)
    return s
warm = [one(i) for i in range(50)]
time.sleep(3)
before = rss()
with concurrent.futures.ThreadPoolExecutor(50) as pool:
    idle = list(pool.map(one, range(n)))
best, end = None, time.time() + settle
while time.time() < end:
    time.sleep(1)
    now = (rss() - before) / n
    best = now if best is None else min(best, now)
print(f"{best:.0f}")
PY
}

measure() {
    local label=$1
    shift
    "$@" >"$TMP/$label.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_port "$PORT"
    echo "$label $(per_connection "$pid")"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
}

results=$(measure gateway "$GATEWAY_BIN" run -c "$TMP/gateway.yaml")
NGINX_BIN=$(command -v nginx || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; } || true)
if [[ -n $NGINX_BIN ]]; then
    results+=$'\n'$(measure nginx "$NGINX_BIN" -p "$TMP/nginx" -e "$TMP/nginx/logs/error.log" -c "$TMP/nginx/nginx.conf")
fi

echo
echo "| Proxy | Idle connections | RSS per idle connection (bytes) |"
echo "| --- | ---: | ---: |"
awk -v n="$CONNECTIONS" '{printf "| %s | %d | %d |\n", $1, n, $2}' <<<"$results"
