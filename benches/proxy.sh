#!/usr/bin/env bash
# Load benchmark for the gateway: one run measures, with wrk on loopback only,
#
#   1. direct      wrk -> one echo backend (127.0.0.1:BASE_PORT)
#   2. gateway     wrk -> gateway (release build, round robin over 3 echo
#                  backends, access log off, active health checks off)
#   3. nginx       wrk -> nginx configured the same way (upstream with the same
#                  3 backends, keepalive 64, access_log off, worker_processes 1,
#                  proxy_http_version 1.1, Connection ""), when nginx is
#                  installed or installable with apt-get
#
# and prints, per target, requests/s, p50 and p99 latency and, for the two
# proxies, the proxy's CPU time per request (utime+stime from /proc/PID/stat,
# master + workers for nginx, read just before and just after the measured wrk
# run, divided by the requests wrk completed); then the ratios gateway/direct
# and gateway/nginx and a markdown table to paste into the README.
#
# Usage (from anywhere):
#   benches/proxy.sh
#   DURATION=30s CONNECTIONS=128 benches/proxy.sh
#
# Environment (defaults in brackets):
#   DURATION [10s]     length of each measured wrk run
#   WARMUP [2s]        wrk warm-up run before each measured run (not counted)
#   CONNECTIONS [64]   wrk -c
#   THREADS [1]        wrk -t
#   PIN [auto]         auto: pin with taskset when it exists and the CPUs below
#                      are usable; 0: no pinning
#   WRK_CPUS [1]       CPUs for wrk (taskset -c)
#   PROXY_CPUS [0]     CPUs for the proxy under test (gateway or nginx)
#   BACKEND_CPUS [0]   CPUs for the echo backends
#                      The default puts the load generator alone on CPU 1 and
#                      the "server side" (proxy + backends, or the backend
#                      alone for the direct run) on CPU 0, so every target
#                      gets the same CPU budget on a 2-core machine. A pinned
#                      gateway sees one CPU and so runs one tokio worker;
#                      nginx runs one worker process: like for like.
#   BASE_PORT [9001]   first echo backend port (3 backends: BASE_PORT..+2)
#   GATEWAY_PORT [18080], NGINX_PORT [18081], ADMIN_PORT [19091]
#   NGINX [auto]       auto: bench nginx when installed/installable; 0: skip;
#                      1: required (fail when it cannot be installed)
#   SKIP_BUILD [0]     1: do not run cargo build (use the existing binary)
#   GATEWAY_BIN        gateway binary [${CARGO_TARGET_DIR:-<repo>/target}/release/gateway]
#   KEEP_TMP [0]       1: keep the temp dir (configs, logs, raw wrk output)
#   PLUGINS [1]        1: also measure the gateway with rate limiting, built-in
#                      (IP key, round robin) vs the api-key + sticky plugins
#   REDIS [auto]       auto: also measure rate limiting with buckets in Redis
#                      (a private redis-server on REDIS_PORT) when redis-server
#                      is installed; 0: skip
#   REDIS_PORT [16379]
#   REDIS_CPUS [$BACKEND_CPUS]  CPUs for the private redis-server (default: share
#                      the proxy's core, the harshest setting on a 2-CPU machine)
#
# Everything binds 127.0.0.1; everything the script starts is stopped on exit.
# Needs: bash, curl, wrk and (optionally) nginx; wrk and nginx are installed
# with `apt-get install -y` when missing (apt-get update only if that fails).

set -euo pipefail

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
PIN=${PIN:-auto}
WRK_CPUS=${WRK_CPUS:-1}
PROXY_CPUS=${PROXY_CPUS:-0}
BACKEND_CPUS=${BACKEND_CPUS:-0}
BASE_PORT=${BASE_PORT:-9001}
GATEWAY_PORT=${GATEWAY_PORT:-18080}
NGINX_PORT=${NGINX_PORT:-18081}
ADMIN_PORT=${ADMIN_PORT:-19091}
NGINX=${NGINX:-auto}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}
PLUGINS=${PLUGINS:-1}
REDIS=${REDIS:-auto}
REDIS_PORT=${REDIS_PORT:-16379}
REDIS_CPUS=${REDIS_CPUS:-$BACKEND_CPUS}
READY_TIMEOUT=${READY_TIMEOUT:-30}   # seconds to wait for a port to answer

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=benches/nginx_conf.sh
source "$ROOT/benches/nginx_conf.sh"
GATEWAY_BIN=${GATEWAY_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/gateway}
BACKEND_COUNT=3
# The gateway reads these; a value left in the caller's environment would
# silently override the generated configs.
unset GATEWAY_CONFIG GATEWAY_LISTEN GATEWAY_BACKENDS GATEWAY_LOG_FORMAT \
    GATEWAY_ADMIN_LISTEN GATEWAY_LOG_LEVEL GATEWAY_ADMIN_TOKEN

# ---------------------------------------------------------------- helpers

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf '\nerror: %s\n' "$*" >&2
    exit 1
}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/gateway-bench.XXXXXX")
chmod 755 "$TMP" # nginx workers (user nobody when run as root) must traverse it
STARTED=()       # pids of every process this script started
FAILED=1

stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local i
    if [[ -n ${WRK_PID:-} ]]; then stop_pid "$WRK_PID"; fi
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
        stop_pid "${STARTED[i]}"
    done
    if [[ -n ${POLICY_RC_CREATED:-} ]]; then rm -f /usr/sbin/policy-rc.d; fi
    if [[ $FAILED == 1 || $KEEP_TMP == 1 ]]; then
        printf 'logs, configs and raw wrk output kept in %s\n' "$TMP" >&2
    else
        rm -rf "$TMP"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        return 1
    fi
}

APT_UPDATED=0
apt_install() { # apt_install PACKAGE...: install, running apt-get update only if needed
    command -v apt-get >/dev/null || return 1
    # Never let a package's postinst start a system service (Docker images
    # usually ship this file already; create it only for the install).
    if [[ ! -e /usr/sbin/policy-rc.d && $EUID -eq 0 ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=1
    fi
    local ok=0
    if as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" \
        >>"$TMP/apt.log" 2>&1; then
        ok=1
    elif [[ $APT_UPDATED == 0 ]]; then
        log "apt-get install $* failed; running apt-get update and retrying"
        APT_UPDATED=1
        if as_root apt-get update >>"$TMP/apt.log" 2>&1 &&
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" \
                >>"$TMP/apt.log" 2>&1; then
            ok=1
        fi
    fi
    if [[ -n ${POLICY_RC_CREATED:-} ]]; then
        rm -f /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=
    fi
    [[ $ok == 1 ]]
}

find_nginx() {
    command -v nginx 2>/dev/null && return 0
    [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx && return 0
    return 1
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_ready NAME PID URL LOGFILE: poll URL with curl until it answers 200.
wait_ready() {
    local name=$1 pid=$2 url=$3 logfile=$4 deadline=$((SECONDS + READY_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$logfile" >&2 || true
            die "$name (pid $pid) exited before $url answered; log above ($logfile)"
        fi
        if [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true) == 200 ]]; then
            return 0
        fi
        sleep 0.1
    done
    tail -n 20 "$logfile" >&2 || true
    die "$name did not answer 200 on $url within ${READY_TIMEOUT}s; log above ($logfile)"
}

# pinned CPUS CMD...: run CMD pinned to CPUS (when pinning is on).
pinned() {
    local cpus=$1
    shift
    if [[ $PIN == 1 ]]; then
        exec taskset -c "$cpus" "$@"
    else
        exec "$@"
    fi
}

# start NAME CPUS LOGFILE CMD...: start CMD in the background; sets STARTED_PID.
# taskset execs the command, so the pid is the server's own.
start() {
    local name=$1 cpus=$2 logfile=$3
    shift 3
    (pinned "$cpus" "$@") >"$logfile" 2>&1 </dev/null &
    STARTED_PID=$!
    STARTED+=("$STARTED_PID")
    log "started $name (pid $STARTED_PID${PIN_NOTE:+, CPU $cpus})"
}

# Clock ticks (utime+stime) of the given pids, summed.
cpu_ticks() {
    local total=0 pid stat fields
    for pid in "$@"; do
        stat=$(<"/proc/$pid/stat") || die "cannot read /proc/$pid/stat (process gone?)"
        # Fields after "pid (comm) ": index 0 is field 3 (state); utime is
        # field 14, stime field 15.
        read -r -a fields <<<"${stat##*) }"
        total=$((total + fields[11] + fields[12]))
    done
    echo "$total"
}

# A process and its direct children (nginx master + workers).
with_children() {
    local parent=$1 f stat fields
    echo "$parent"
    for f in /proc/[0-9]*/stat; do
        { stat=$(<"$f"); } 2>/dev/null || continue
        read -r -a fields <<<"${stat##*) }"
        if [[ ${fields[1]} == "$parent" ]]; then
            f=${f#/proc/}
            echo "${f%/stat}"
        fi
    done
}

fmt_latency() { # microseconds -> "850 µs" / "1.23 ms"
    awk -v us="$1" 'BEGIN { if (us < 1000) printf "%d µs", us + 0.5; else printf "%.2f ms", us / 1000 }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }

# wrk prints a machine-readable line at the end through this script.
cat >"$TMP/report.lua" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_RESULT requests=%.0f duration_us=%.0f p50_us=%.0f p99_us=%.0f mean_us=%.0f connect=%.0f read=%.0f write=%.0f status=%.0f timeout=%.0f\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
end
EOF

# run_wrk OUTFILE WRK-COMMAND...: run wrk pinned, in the background so that a
# signal to this script interrupts the wait and cleanup stops wrk too.
WRK_PID=
run_wrk() {
    local out=$1 rc=0
    shift
    (pinned "$WRK_CPUS" "$@") >"$out" 2>&1 </dev/null &
    WRK_PID=$!
    wait "$WRK_PID" || rc=$?
    WRK_PID=
    return "$rc"
}

# bench KEY LABEL URL [PIDS-FUNCTION]: warm up, then measure; fills R_* arrays.
declare -A R_RPS R_P50 R_P99 R_CPU R_ERR
bench() {
    local key=$1 label=$2 url=$3 pids_of=${4:-} out="$TMP/wrk-$1.txt"
    # Every target gets the same request headers (the plugins read them).
    local wrk_cmd=(wrk -t"$THREADS" -c"$CONNECTIONS" --latency -s "$TMP/report.lua"
        -H "X-API-Key: bench-key" -H "X-User: bench-user")
    log "$label: warm-up ${WARMUP} against $url"
    run_wrk "$TMP/wrk-$key-warmup.txt" "${wrk_cmd[@]}" -d"$WARMUP" "$url" ||
        die "wrk warm-up against $label failed: $(tail -n 5 "$TMP/wrk-$key-warmup.txt")"

    local pids=() before=0 after=0
    if [[ -n $pids_of ]]; then
        mapfile -t pids < <($pids_of)
        before=$(cpu_ticks "${pids[@]}")
    fi
    log "$label: measuring ${DURATION} (wrk -t$THREADS -c$CONNECTIONS)"
    run_wrk "$out" "${wrk_cmd[@]}" -d"$DURATION" "$url" ||
        die "wrk against $label failed: $(tail -n 5 "$out")"
    if [[ -n $pids_of ]]; then
        after=$(cpu_ticks "${pids[@]}")
    fi

    sed '/^WRK_RESULT/d; s/^/    /' "$out"
    local line
    line=$(grep '^WRK_RESULT' "$out") || die "no result line in wrk output for $label ($out)"
    local requests duration p50 p99 connect rd wr status timeout
    requests=$(sed -n 's/.* requests=\([0-9]*\).*/\1/p' <<<"$line")
    duration=$(sed -n 's/.* duration_us=\([0-9]*\).*/\1/p' <<<"$line")
    p50=$(sed -n 's/.* p50_us=\([0-9]*\).*/\1/p' <<<"$line")
    p99=$(sed -n 's/.* p99_us=\([0-9]*\).*/\1/p' <<<"$line")
    connect=$(sed -n 's/.* connect=\([0-9]*\).*/\1/p' <<<"$line")
    rd=$(sed -n 's/.* read=\([0-9]*\).*/\1/p' <<<"$line")
    wr=$(sed -n 's/.* write=\([0-9]*\).*/\1/p' <<<"$line")
    status=$(sed -n 's/.* status=\([0-9]*\).*/\1/p' <<<"$line")
    timeout=$(sed -n 's/.* timeout=\([0-9]*\).*/\1/p' <<<"$line")
    [[ ${requests:-0} -gt 0 ]] || die "wrk completed no request against $label ($out)"

    R_RPS[$key]=$(awk -v n="$requests" -v us="$duration" 'BEGIN { printf "%.0f", n / (us / 1e6) }')
    R_P50[$key]=$p50
    R_P99[$key]=$p99
    R_ERR[$key]=$((connect + rd + wr + status + timeout))
    if ((R_ERR[$key] > 0)); then
        warn "$label: $status non-2xx/3xx responses, socket errors connect $connect read $rd write $wr timeout $timeout"
    fi
    if [[ -n $pids_of ]]; then
        R_CPU[$key]=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$requests" \
            'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
    else
        R_CPU[$key]=
    fi
    printf '  -> %s: %s req/s, p50 %s, p99 %s%s, errors %s\n\n' "$label" "${R_RPS[$key]}" \
        "$(fmt_latency "$p50")" "$(fmt_latency "$p99")" \
        "${R_CPU[$key]:+, proxy CPU ${R_CPU[$key]} µs/request (${#pids[@]} process(es))}" "${R_ERR[$key]}"
}

# Checks that URL spreads requests over all backends (echo body names them).
check_round_robin() {
    local label=$1 url=$2 seen i body
    seen=$(for ((i = 0; i < 6; i++)); do
        body=$(curl -sf --max-time 2 "$url") || die "$label: request to $url failed"
        sed -n 's/.*"backend": *"\([^"]*\)".*/\1/p' <<<"$body"
    done | sort -u | tr '\n' ' ')
    log "$label: 6 requests reached backends: ${seen% }"
    (($(wc -w <<<"$seen") == BACKEND_COUNT)) || warn "$label did not reach all $BACKEND_COUNT backends"
}

# ---------------------------------------------------------------- preflight

command -v curl >/dev/null || die "curl is required"
[[ $DURATION =~ ^[0-9]+[smh]?$ ]] || die "DURATION must look like 10s (got $DURATION)"
[[ $WARMUP =~ ^[0-9]+[smh]?$ ]] || die "WARMUP must look like 2s (got $WARMUP)"
[[ $CONNECTIONS =~ ^[0-9]+$ && $THREADS =~ ^[0-9]+$ ]] || die "CONNECTIONS and THREADS must be integers"
((CONNECTIONS >= THREADS)) || die "CONNECTIONS ($CONNECTIONS) must be >= THREADS ($THREADS)"

if ! command -v wrk >/dev/null; then
    log "wrk not found; installing it with apt-get"
    apt_install wrk || die "wrk is missing and apt-get install -y wrk failed (see $TMP/apt.log)"
fi

NGINX_BIN=
if [[ $NGINX != 0 ]]; then
    if ! NGINX_BIN=$(find_nginx); then
        log "nginx not found; installing it with apt-get (it is run privately, never as a service)"
        if apt_install nginx && NGINX_BIN=$(find_nginx); then
            :
        elif [[ $NGINX == 1 ]]; then
            die "nginx is missing and apt-get install -y nginx failed (see $TMP/apt.log)"
        else
            warn "nginx is not installed and could not be installed; skipping the nginx target"
            NGINX_BIN=
        fi
    fi
fi

CLK_TCK=$(getconf CLK_TCK)
case $PIN in
auto)
    PIN=0
    if command -v taskset >/dev/null &&
        taskset -c "$WRK_CPUS" true 2>/dev/null &&
        taskset -c "$PROXY_CPUS" true 2>/dev/null &&
        taskset -c "$BACKEND_CPUS" true 2>/dev/null; then
        PIN=1
    else
        warn "not pinning: taskset missing or CPUs $WRK_CPUS/$PROXY_CPUS/$BACKEND_CPUS not usable"
    fi
    ;;
0 | 1) ;;
*) die "PIN must be auto, 0 or 1" ;;
esac
PIN_NOTE=
[[ $PIN == 1 ]] && PIN_NOTE=1

ports=()
for ((i = 0; i < BACKEND_COUNT; i++)); do ports+=($((BASE_PORT + i))); done
ports+=("$GATEWAY_PORT" "$ADMIN_PORT")
[[ -n $NGINX_BIN ]] && ports+=("$NGINX_PORT")
for port in "${ports[@]}"; do
    if port_in_use "$port"; then
        die "127.0.0.1:$port is already in use; stop what listens there or pick other ports (BASE_PORT, GATEWAY_PORT, NGINX_PORT, ADMIN_PORT)"
    fi
done

if [[ $SKIP_BUILD != 1 ]]; then
    log "building the gateway: cargo build --release -p gateway"
    (cd "$ROOT" && cargo build --release -p gateway) || die "cargo build --release -p gateway failed"
fi
[[ -x $GATEWAY_BIN ]] || die "gateway binary not found at $GATEWAY_BIN (set GATEWAY_BIN or drop SKIP_BUILD)"

# ---------------------------------------------------------------- backends

BACKEND_URLS=()
for ((i = 0; i < BACKEND_COUNT; i++)); do BACKEND_URLS+=("http://127.0.0.1:$((BASE_PORT + i))"); done

cat >"$TMP/backends.yaml" <<EOF
# Only read for its log settings by 'gateway demo --backends-only'.
listen: 127.0.0.1:$GATEWAY_PORT
admin:
  listen: 127.0.0.1:$ADMIN_PORT
log:
  level: warn
  format: pretty
  access: false
EOF

start "echo backends" "$BACKEND_CPUS" "$TMP/backends.log" \
    "$GATEWAY_BIN" demo --backends-only --backends "$BACKEND_COUNT" --base-port "$BASE_PORT" \
    -c "$TMP/backends.yaml"
BACKENDS_PID=$STARTED_PID
for url in "${BACKEND_URLS[@]}"; do
    wait_ready "echo backend" "$BACKENDS_PID" "$url/" "$TMP/backends.log"
done

host_desc="$(uname -sm), $(nproc) CPUs"
cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1 || true)
[[ -n $cpu_model ]] && host_desc="$host_desc ($cpu_model)"
if [[ $PIN == 1 ]]; then
    pin_desc="wrk on CPU $WRK_CPUS, proxy on CPU $PROXY_CPUS, echo backends on CPU $BACKEND_CPUS (taskset)"
else
    pin_desc="no CPU pinning"
fi
gateway_version=$("$GATEWAY_BIN" --version 2>/dev/null || echo gateway)
wrk_version=$(wrk -v 2>&1 | head -n 1 | awk '{print $1, $2}' || true)

printf '\nBenchmark: wrk -t%s -c%s -d%s (warm-up %s), %s\n' "$THREADS" "$CONNECTIONS" "$DURATION" "$WARMUP" "$pin_desc"
printf 'Host: %s; CLK_TCK=%s; %s; %s\n\n' "$host_desc" "$CLK_TCK" "$gateway_version" "${wrk_version:-wrk}"

# ---------------------------------------------------------------- 1. direct

bench direct "direct (1 backend)" "${BACKEND_URLS[0]}/"

# ---------------------------------------------------------------- 2. gateway

# gateway_yaml EXTRA: the gateway config, with EXTRA appended.
gateway_yaml() {
    echo "listen: 127.0.0.1:$GATEWAY_PORT"
    echo "backends:"
    for url in "${BACKEND_URLS[@]}"; do echo "  - $url"; done
    cat <<EOF
health_check:
  # nginx (open source) has no active checks; match it: passive only, a
  # failed backend gets traffic again after 10s (nginx's fail_timeout).
  enabled: false
  interval: 10s
admin:
  listen: 127.0.0.1:$ADMIN_PORT
log:
  level: warn
  format: pretty
  access: false
EOF
    printf '%s' "$1"
}

# run_gateway KEY LABEL EXTRA-YAML: start the gateway with that config and measure it.
run_gateway() {
    local key=$1 label=$2
    gateway_yaml "$3" >"$TMP/$key.yaml"
    "$GATEWAY_BIN" validate -c "$TMP/$key.yaml" >"$TMP/$key-validate.txt" 2>&1 ||
        die "generated $key config is invalid: $(cat "$TMP/$key-validate.txt")"
    start "$key" "$PROXY_CPUS" "$TMP/$key.log" "$GATEWAY_BIN" run -c "$TMP/$key.yaml"
    GATEWAY_PID=$STARTED_PID
    wait_ready "$key" "$GATEWAY_PID" "http://127.0.0.1:$GATEWAY_PORT/" "$TMP/$key.log"
    check_round_robin "$key" "http://127.0.0.1:$GATEWAY_PORT/"
    bench "$key" "$label" "http://127.0.0.1:$GATEWAY_PORT/" gateway_pids
    stop_pid "$GATEWAY_PID"
}
gateway_pids() { echo "$GATEWAY_PID"; }

run_gateway gateway "gateway" "balancer:
  algorithm: round_robin
"

# ------------------------------------------- 2b. rate limiting, built-in vs plugins

LIMITS="  default:
    capacity: 1000000000
    refill_per_second: 1000000
  database: sqlite://$TMP/limits.db
"
if [[ $PLUGINS == 1 ]]; then
    log "building the example plugins (wasm32-wasip2)"
    rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
    cargo build --release --target wasm32-wasip2 --manifest-path "$ROOT/plugins/Cargo.toml" >"$TMP/plugins-build.txt" 2>&1 ||
        die "plugin build failed: $(tail -n 20 "$TMP/plugins-build.txt")"
    WASM="$ROOT/plugins/target/wasm32-wasip2/release"
    run_gateway limit "gateway + rate limit (IP key, round robin)" "rate_limit:
  key: ip
$LIMITS"
    run_gateway plugins "gateway + rate limit (api-key plugin, sticky plugin)" "rate_limit:
  key: plugin
  key_plugin: $WASM/api_key.wasm
$LIMITS
balancer:
  algorithm: plugin
  plugin: $WASM/sticky.wasm
plugins:
  cache_dir: $TMP/plugin-cache
"
fi

# ------------------------------------------- 2c. rate limiting, local vs Redis

if [[ $REDIS != 0 ]] && command -v redis-server >/dev/null; then
    start redis "$REDIS_CPUS" "$TMP/redis.log" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
        --save "" --appendonly no
    REDIS_PID=$STARTED_PID
    for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
    if [[ $PLUGINS != 1 ]]; then
        run_gateway limit "gateway + rate limit (IP key, round robin)" "rate_limit:
  key: ip
$LIMITS"
    fi
    # Round trips = EVALSHA (+ EVAL/SCRIPT when the script had to be loaded).
    script_calls() {
        redis-cli -p "$REDIS_PORT" info commandstats |
            awk -F'[:=,]' '/^cmdstat_(evalsha|eval|script)(\||:)/ { n += $3 } END { print n + 0 }'
    }
    calls_before=$(script_calls)
    run_gateway redis "gateway + rate limit in Redis" "rate_limit:
  key: ip
  shared: redis://127.0.0.1:$REDIS_PORT
$LIMITS"
    calls_after=$(script_calls)
    # Every request of the warm-up and the measured run went to Redis.
    redis_requests=$(grep -h '^WRK_RESULT' "$TMP/wrk-redis-warmup.txt" "$TMP/wrk-redis.txt" |
        sed -n 's/.* requests=\([0-9]*\).*/\1/p' | awk '{ n += $1 } END { print n + 0 }')
    REDIS_PER_REQUEST=$(awk -v c=$((calls_after - calls_before)) -v n="$redis_requests" 'BEGIN { printf "%.2f", c / n }')
    stop_pid "$REDIS_PID"
    HAVE_REDIS=1
else
    HAVE_REDIS=0
fi

# ---------------------------------------------------------------- 3. nginx

nginx_version=
if [[ -n $NGINX_BIN ]]; then
    nginx_version=$("$NGINX_BIN" -v 2>&1 | sed -n 's|.*nginx/\([^ ]*\).*|\1|p')
    NP="$TMP/nginx"
    mkdir -p "$NP/logs" "$NP/tmp"
    chmod 755 "$NP"
    nginx_conf "$NP" "$NGINX_PORT" "$BASE_PORT" "$BACKEND_COUNT" >"$NP/nginx.conf"

    "$NGINX_BIN" -t -p "$NP" -e "$NP/logs/error.log" -c "$NP/nginx.conf" >"$TMP/nginx-test.txt" 2>&1 ||
        die "nginx rejected the generated config: $(cat "$TMP/nginx-test.txt")"
    start nginx "$PROXY_CPUS" "$TMP/nginx.log" \
        "$NGINX_BIN" -p "$NP" -e "$NP/logs/error.log" -c "$NP/nginx.conf" -g 'daemon off;'
    NGINX_PID=$STARTED_PID
    wait_ready nginx "$NGINX_PID" "http://127.0.0.1:$NGINX_PORT/" "$NP/logs/error.log"
    check_round_robin nginx "http://127.0.0.1:$NGINX_PORT/"

    nginx_pids() { with_children "$NGINX_PID"; }
    workers=$(($(nginx_pids | wc -l) - 1))
    ((workers >= 1)) || die "nginx master $NGINX_PID has no worker process"
    bench nginx "nginx ${nginx_version}" "http://127.0.0.1:$NGINX_PORT/" nginx_pids
    stop_pid "$NGINX_PID"
fi

stop_pid "$BACKENDS_PID"

# ---------------------------------------------------------------- summary

ms() { awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }
row() { # row KEY LABEL
    local k=$1
    printf '| %s | %s | %s | %s | %s | %s |\n' "$2" "${R_RPS[$k]}" "$(ms "${R_P50[$k]}")" \
        "$(ms "${R_P99[$k]}")" "${R_CPU[$k]:-—}" "${R_ERR[$k]}"
}

echo
echo "Ratios"
printf '  gateway vs direct:  requests/s %s×, p50 %s×, p99 %s×\n' \
    "$(ratio "${R_RPS[gateway]}" "${R_RPS[direct]}")" \
    "$(ratio "${R_P50[gateway]}" "${R_P50[direct]}")" \
    "$(ratio "${R_P99[gateway]}" "${R_P99[direct]}")"
if [[ -n $NGINX_BIN ]]; then
    printf '  gateway vs nginx:   CPU µs/request %s×, p99 %s×, p50 %s×, requests/s %s×\n' \
        "$(ratio "${R_CPU[gateway]}" "${R_CPU[nginx]}")" \
        "$(ratio "${R_P99[gateway]}" "${R_P99[nginx]}")" \
        "$(ratio "${R_P50[gateway]}" "${R_P50[nginx]}")" \
        "$(ratio "${R_RPS[gateway]}" "${R_RPS[nginx]}")"
else
    echo "  gateway vs nginx:   not measured (nginx skipped or not installable)"
fi

echo
echo "Markdown (paste into README):"
echo
echo "| Target | Requests/s | p50 (ms) | p99 (ms) | Proxy CPU (µs/request) | Errors |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
row direct "Direct to one echo backend"
row gateway "gateway (round robin, 3 backends)"
if [[ $PLUGINS == 1 ]]; then
    row limit "gateway + rate limit (IP key, round robin)"
    row plugins "gateway + rate limit, api-key + sticky plugins"
fi
if [[ $HAVE_REDIS == 1 ]]; then
    [[ $PLUGINS == 1 ]] || row limit "gateway + rate limit (IP key, round robin)"
    row redis "gateway + rate limit in Redis"
fi
[[ -n $NGINX_BIN ]] && row nginx "nginx $nginx_version (same setup)"
echo
echo "| Ratio | gateway ÷ direct | gateway ÷ nginx |"
echo "| --- | ---: | ---: |"
if [[ -n $NGINX_BIN ]]; then
    n_rps=$(ratio "${R_RPS[gateway]}" "${R_RPS[nginx]}")
    n_p99=$(ratio "${R_P99[gateway]}" "${R_P99[nginx]}")
    n_cpu=$(ratio "${R_CPU[gateway]}" "${R_CPU[nginx]}")
else
    n_rps="—" n_p99="—" n_cpu="—"
fi
echo "| Requests/s | $(ratio "${R_RPS[gateway]}" "${R_RPS[direct]}") | $n_rps |"
echo "| p99 latency | $(ratio "${R_P99[gateway]}" "${R_P99[direct]}") | $n_p99 |"
echo "| Proxy CPU per request | — | $n_cpu |"
if [[ $PLUGINS == 1 ]]; then
    echo
    printf 'Plugins vs built-in (both with rate limiting): requests/s %s×, p99 %s×, CPU µs/request %s×\n' \
        "$(ratio "${R_RPS[plugins]}" "${R_RPS[limit]}")" \
        "$(ratio "${R_P99[plugins]}" "${R_P99[limit]}")" \
        "$(ratio "${R_CPU[plugins]}" "${R_CPU[limit]}")"
fi
if [[ $HAVE_REDIS == 1 ]]; then
    echo
    printf 'Redis vs local buckets: requests/s %s×, p99 %s×; Redis round trips (script calls) per request: %s (the script runs TIME, HMGET, HSET, PEXPIRE inside Redis)\n' \
        "$(ratio "${R_RPS[redis]}" "${R_RPS[limit]}")" \
        "$(ratio "${R_P99[redis]}" "${R_P99[limit]}")" \
        "$REDIS_PER_REQUEST"
fi
echo
printf '_wrk -t%s -c%s -d%s after a %s warm-up, loopback, %s; %s; %s%s. Proxy CPU = utime+stime from /proc/PID/stat%s over the measured run ÷ requests completed._\n' \
    "$THREADS" "$CONNECTIONS" "$DURATION" "$WARMUP" "$pin_desc" "$host_desc" "$gateway_version" \
    "${nginx_version:+, nginx $nginx_version (worker_processes 1, keepalive 64)}" \
    "${nginx_version:+ (nginx: master + worker)}"

FAILED=0
