#!/usr/bin/env bash
# User-space instructions per proxied request, gateway vs nginx and HAProxy,
# counted by valgrind's callgrind: unlike CPU time on a shared VM, the count
# repeats from run to run, so it shows what a change to the request path costs.
#
# Rows (each proxy runs under callgrind, one thread of work, with the same
# three echo backends and the settings of benches/proxy.sh: round robin,
# keep-alive, access log off, no active health checks):
#   gateway   proxy.workers 1, one backend list (no routes)
#   limit     the same + rate limiting: key ip, a bucket so large that no
#             request is refused, buckets persisted to SQLite in the temp dir
#             (benches/proxy.sh's limit target); the issue's target is
#             limit ÷ gateway ≤ 1.05
#   uring     the limit row with proxy.io: io_uring (URING=0 leaves it out);
#             uring ÷ limit is what the ring path costs or saves in user
#             space (the system calls it saves are the kernel's side)
#   plugins   the limit row keyed by the api-key example plugin, backends
#             chosen by the sticky example plugin (benches/proxy.sh's plugins
#             target; PLUGINS=0 leaves the row out); plugins ÷ limit is what
#             the two component-model calls cost in the proxy
#   routed    pools and routes: nine routes (hosts, wildcard hosts, prefixes
#             with methods) that the benchmark's requests do not match, then
#             a catch-all to the pool; the table is walked on every request
#             (ROUTED=0 leaves the row out)
#   nginx     benches/nginx_conf.sh with master_process off (one process)
#   haproxy   benches/haproxy_conf.sh with nbthread 1, in the foreground (-db)
#
# Every row gets the request headers of benches/proxy.sh (X-API-Key and
# X-User, which the plugins read).
#
# Methods (METHODS): GET is a plain GET /; POST sends POST_BYTES of body with
# Content-Length (the wrk Lua script of benches/proxy.sh, from lib.sh), and
# the echo backends read the body and answer with its size (checked with
# curl before the POST is measured).
#
# Per row the proxy is started once and, for each method: wrk warms up, the
# counters are zeroed (callgrind_control -z), wrk runs DURATION, the counters
# are dumped (callgrind_control -d) and instructions ÷ completed requests is
# printed. Kernel work (the TCP stack) is not counted: for GET, strace shows
# the proxies make the same two recv/writev pairs per request; for POST the
# number of reads and writes can differ (head and body in one write or two),
# and only the user-space side of that difference is counted here. Valgrind
# runs the threads of a process one at a time;
# HAProxy is run with nbthread 1 (its own default would be one thread per
# CPU), so it is one thread of work like the others; callgrind_control
# reaches it like the others (checked: the dump has to appear).
#
# With RUNS=N the rows are measured N times, interleaved (the order of the
# rows and of the methods rotated per run), and the per-run counts and the
# median are printed. The table has a row per proxy and method; the ratios
# are per method, and with both methods POST ÷ GET is printed per proxy.
#
# Usage: benches/proxy_instructions.sh
#   METHODS="GET POST" benches/proxy_instructions.sh
#   Environment (defaults in brackets): METHODS [GET] (GET, POST or
#   "GET POST"), POST_BYTES [1024] (the POST body), DURATION [8s],
#   WARMUP [3s] (both per method), CONNECTIONS [64], RUNS [1], ROUTED [1], URING [1],
#   PLUGINS [1], PROFILE [release] (the cargo profile built and counted; dist is
#   what `cargo install --profile dist` builds),
#   NGINX [auto], HAPROXY [auto] (auto: the row when installed/installable
#   with apt-get; 0: skip; 1: required), SKIP_BUILD [0], GATEWAY_BIN,
#   BASE_PORT [9001], PORT [18090] (every proxy listens there in turn; the
#   gateway's admin on PORT+1), READY_TIMEOUT [60], KEEP_TMP [0].
#   Needs valgrind (callgrind_control), wrk, curl. Loopback only.

set -euo pipefail

DURATION=${DURATION:-8s}
WARMUP=${WARMUP:-3s}
CONNECTIONS=${CONNECTIONS:-64}
RUNS=${RUNS:-1}
METHODS=${METHODS:-GET}
POST_BYTES=${POST_BYTES:-1024}
ROUTED=${ROUTED:-1}
PLUGINS=${PLUGINS:-1}
URING=${URING:-1}
NGINX=${NGINX:-auto}
HAPROXY=${HAPROXY:-auto}
BASE_PORT=${BASE_PORT:-9001}
PORT=${PORT:-18090}
ADMIN_PORT=$((PORT + 1))
READY_TIMEOUT=${READY_TIMEOUT:-60} # callgrind starts slowly
KEEP_TMP=${KEEP_TMP:-0}
PIN=0 # valgrind runs the threads one at a time anyway
PIN_NOTE=
WRK_CPUS=0
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
# shellcheck source=benches/nginx_conf.sh
source "$ROOT/benches/nginx_conf.sh"
# shellcheck source=benches/haproxy_conf.sh
source "$ROOT/benches/haproxy_conf.sh"
PROFILE=${PROFILE:-release}
[[ $PROFILE =~ ^[a-z][a-z0-9_-]*$ ]] || die "PROFILE must be a cargo profile name (got $PROFILE)"
PROFILE_DIR=$PROFILE
[[ $PROFILE == dev ]] && PROFILE_DIR=debug # cargo's one exception
GATEWAY_BIN=${GATEWAY_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE_DIR/gateway}
WASM="$ROOT/plugins/target/wasm32-wasip2/release"
BACKEND_COUNT=3

bench_init gateway-instr

for tool in valgrind callgrind_control wrk curl; do
    command -v "$tool" >/dev/null || die "$tool is required"
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer (got $RUNS)"
[[ $DURATION =~ ^[0-9]+[smh]?$ && $WARMUP =~ ^[0-9]+[smh]?$ ]] || die "DURATION and WARMUP must look like 8s"
[[ $POST_BYTES =~ ^[0-9]+$ ]] || die "POST_BYTES must be an integer (got $POST_BYTES)"
read -r -a METHOD_LIST <<<"$METHODS"
case "${METHOD_LIST[*]}" in
GET | POST | "GET POST" | "POST GET") ;;
*) die "METHODS must be GET, POST or \"GET POST\" (got \"$METHODS\")" ;;
esac
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    (cd "$ROOT" && cargo build --profile "$PROFILE" -p gateway) || die "cargo build --profile $PROFILE -p gateway failed"
fi
[[ -x $GATEWAY_BIN ]] || die "gateway binary not found at $GATEWAY_BIN (set GATEWAY_BIN or drop SKIP_BUILD)"
if [[ $PLUGINS == 1 ]]; then
    if [[ ${SKIP_BUILD:-0} == 1 && -f $WASM/api_key.wasm && -f $WASM/sticky.wasm ]]; then
        log "using the example plugins already built in $WASM (SKIP_BUILD=1)"
    else
        log "building the example plugins (wasm32-wasip2)"
        cargo build --release --target wasm32-wasip2 --manifest-path "$ROOT/plugins/Cargo.toml" \
            >"$TMP/plugins-build.txt" 2>&1 || die "plugin build failed: $(tail -n 20 "$TMP/plugins-build.txt")"
    fi
fi
NGINX_BIN=$(find_or_install nginx "$NGINX" nginx find_nginx)
HAPROXY_BIN=$(find_or_install haproxy "$HAPROXY" haproxy find_haproxy)
ports=("$PORT" "$ADMIN_PORT")
for ((i = 0; i < BACKEND_COUNT; i++)); do ports+=($((BASE_PORT + i))); done
check_ports "BASE_PORT, PORT" "${ports[@]}"

start_backends "" "$PORT" "$ADMIN_PORT"
write_method_luas # $TMP/get.lua, $TMP/post.lua, $TMP/body.bin

# ---------------------------------------------------------------- configs

# gateway_yaml ROW: the gateway's config for a row.
gateway_yaml() {
    echo "listen: 127.0.0.1:$PORT"
    if [[ $1 == routed ]]; then
        gateway_routed_yaml
    else
        echo "backends:"
        for url in "${BACKEND_URLS[@]}"; do echo "  - $url"; done
        echo "health_check:"
        echo "  enabled: false"
    fi
    cat <<EOF
proxy:
  workers: 1
  io: $([[ $1 == uring ]] && echo io_uring || echo epoll)
admin:
  listen: 127.0.0.1:$ADMIN_PORT
log:
  level: warn
  access: false
EOF
    if [[ $1 == limit || $1 == uring || $1 == plugins ]]; then
        # benches/proxy.sh's limit and plugins targets.
        local key="key: ip"
        [[ $1 == plugins ]] && key="key: plugin
  key_plugin: $WASM/api_key.wasm"
        cat <<EOF
rate_limit:
  $key
  default:
    capacity: 1000000000
    refill_per_second: 1000000
  database: sqlite://$TMP/limits-$1.db
EOF
    fi
    if [[ $1 == plugins ]]; then
        cat <<EOF
balancer:
  algorithm: plugin
  plugin: $WASM/sticky.wasm
plugins:
  cache_dir: $TMP/plugin-cache
EOF
    fi
}

ROWS=(gateway limit)
[[ $URING == 1 ]] && ROWS+=(uring)
[[ $PLUGINS == 1 ]] && ROWS+=(plugins)
[[ $ROUTED == 1 ]] && ROWS+=(routed)
for row in "${ROWS[@]}"; do
    gateway_yaml "$row" >"$TMP/$row.yaml"
    "$GATEWAY_BIN" validate -c "$TMP/$row.yaml" >"$TMP/$row-validate.txt" 2>&1 ||
        die "generated $row config is invalid: $(cat "$TMP/$row-validate.txt")"
done
declare -A LABEL=([gateway]="gateway" [limit]="gateway + limiter (IP key)"
    [uring]="gateway + limiter, io_uring"
    [plugins]="gateway + limiter, api-key + sticky plugins"
    [routed]="gateway routed (10 routes, the last matches)")
if [[ -n $NGINX_BIN ]]; then
    mkdir -p "$TMP/nginx/logs" "$TMP/nginx/tmp"
    nginx_conf "$TMP/nginx" "$PORT" "$BASE_PORT" "$BACKEND_COUNT" $'master_process off;\ndaemon off;' \
        >"$TMP/nginx/nginx.conf"
    ROWS+=(nginx)
    LABEL[nginx]="nginx $("$NGINX_BIN" -v 2>&1 | sed -n 's|.*nginx/\([^ ]*\).*|\1|p')"
fi
if [[ -n $HAPROXY_BIN ]]; then
    haproxy_conf "$PORT" "$BASE_PORT" "$BACKEND_COUNT" 1 >"$TMP/haproxy.cfg"
    "$HAPROXY_BIN" -c -f "$TMP/haproxy.cfg" >"$TMP/haproxy-test.txt" 2>&1 ||
        die "haproxy rejected the generated config: $(cat "$TMP/haproxy-test.txt")"
    ROWS+=(haproxy)
    LABEL[haproxy]="HAProxy $("$HAPROXY_BIN" -v 2>&1 | sed -n 's/^HAProxy version \([^ ]*\).*/\1/p' | head -n 1)"
fi

row_command() { # row_command ROW: sets CMD to the proxy's command line
    case $1 in
    nginx) CMD=("$NGINX_BIN" -p "$TMP/nginx" -e "$TMP/nginx/logs/error.log" -c "$TMP/nginx/nginx.conf") ;;
    haproxy) CMD=("$HAPROXY_BIN" -f "$TMP/haproxy.cfg" -db) ;;
    *) CMD=("$GATEWAY_BIN" run -c "$TMP/$1.yaml") ;;
    esac
}

# ---------------------------------------------------------------- measuring

declare -A REQS INSTR
has_method() { [[ " ${METHOD_LIST[*]} " == *" $1 "* ]]; }

# measure ROW RUN METHOD...: starts the row's proxy under callgrind and
# counts its instructions per request for each METHOD in turn.
measure() {
    local row=$1 run=$2 url="http://127.0.0.1:$PORT/" pid CMD=() tag="$1-$2" dumps=0 method
    shift 2
    row_command "$row"
    start "${LABEL[$row]} under callgrind" "" "$TMP/$tag.log" \
        valgrind --tool=callgrind --callgrind-out-file="$TMP/callgrind-$tag.%p" "${CMD[@]}"
    pid=$STARTED_PID
    wait_ready "${LABEL[$row]}" "$pid" "$url" "$TMP/$tag.log"
    check_round_robin "${LABEL[$row]}" "$url"
    if has_method POST; then check_post "${LABEL[$row]}" "$url"; fi
    for method in "$@"; do
        local mtag="$tag-$method" lua="$TMP/get.lua" name="${LABEL[$row]}, $method"
        [[ $method == POST ]] && lua="$TMP/post.lua"
        local wrk_cmd=(wrk -t1 -c"$CONNECTIONS" -s "$lua" -H "X-API-Key: bench-key" -H "X-User: bench-user")
        run_wrk "$TMP/wrk-$mtag-warmup.txt" "${wrk_cmd[@]}" -d"$WARMUP" "$url" ||
            die "wrk warm-up against $name failed: $(tail -n 5 "$TMP/wrk-$mtag-warmup.txt")"
        callgrind_control -z "$pid" >>"$TMP/callgrind-control-$tag.txt" 2>&1 ||
            die "callgrind_control -z $pid failed: $(cat "$TMP/callgrind-control-$tag.txt")"
        run_wrk "$TMP/wrk-$mtag.txt" "${wrk_cmd[@]}" -d"$DURATION" "$url" ||
            die "wrk against $name failed: $(tail -n 5 "$TMP/wrk-$mtag.txt")"
        callgrind_control -d "$pid" >>"$TMP/callgrind-control-$tag.txt" 2>&1 ||
            die "callgrind_control -d $pid failed: $(cat "$TMP/callgrind-control-$tag.txt")"
        dumps=$((dumps + 1)) # callgrind numbers its dumps .1, .2, …
        wrk_result "$TMP/wrk-$mtag.txt" "$name"
        ((W_ERRORS == 0)) || warn "$name: $W_STATUS non-2xx/3xx responses, $((W_ERRORS - W_STATUS)) socket errors"
        local dump="$TMP/callgrind-$tag.$pid.$dumps" instructions
        [[ -s $dump ]] || die "no callgrind dump $dump after callgrind_control -d (see $TMP/callgrind-control-$tag.txt)"
        instructions=$(awk '/^(summary|totals):/ { print $2; exit }' "$dump")
        [[ -n $instructions ]] || die "no instruction total in $dump"
        REQS[$row|$method|$run]=$W_REQUESTS
        INSTR[$row|$method|$run]=$(awk -v i="$instructions" -v n="$W_REQUESTS" 'BEGIN { printf "%.0f", i / n }')
        log "run $run, $name: ${INSTR[$row|$method|$run]} instructions/request over $W_REQUESTS requests"
    done
    stop_started "$pid"
}

log "rows: ${ROWS[*]}; methods: ${METHOD_LIST[*]}$(has_method POST && echo " (POST body $POST_BYTES bytes)"); $RUNS run(s) of a $WARMUP warm-up and $DURATION counted per row and method"
n=${#ROWS[@]}
nm=${#METHOD_LIST[@]}
for ((run = 1; run <= RUNS; run++)); do
    methods=()
    for ((i = 0; i < nm; i++)); do methods+=("${METHOD_LIST[(i + run - 1) % nm]}"); done
    for ((i = 0; i < n; i++)); do measure "${ROWS[(i + run - 1) % n]}" "$run" "${methods[@]}"; done
done

# ---------------------------------------------------------------- report

per() { # per ROW METHOD: the median instructions/request over the runs
    local run values=()
    for ((run = 1; run <= RUNS; run++)); do values+=("${INSTR[$1|$2|$run]}"); done
    stats "${values[@]}" | awk '{ printf "%.0f", $1 }'
}
has() { [[ " ${ROWS[*]} " == *" $1 "* ]]; }

echo
if ((RUNS > 1)); then
    echo "| Proxy | Method | Requests counted (per run) | Instructions per request (user space; per run) | Median |"
    echo "| --- | --- | ---: | ---: | ---: |"
else
    echo "| Proxy | Method | Requests counted | Instructions per request (user space) |"
    echo "| --- | --- | ---: | ---: |"
fi
for method in "${METHOD_LIST[@]}"; do
    for row in "${ROWS[@]}"; do
        reqs=()
        instr=()
        for ((run = 1; run <= RUNS; run++)); do
            reqs+=("${REQS[$row|$method|$run]}")
            instr+=("$(printf "%'d" "${INSTR[$row|$method|$run]}")")
        done
        if ((RUNS > 1)); then
            printf '| %s | %s | %s | %s | %s |\n' "${LABEL[$row]}" "$method" "$(IFS=/ && echo "${reqs[*]}")" \
                "$(printf '%s · ' "${instr[@]}" | sed 's/ · $//')" "$(printf "%'d" "$(per "$row" "$method")")"
        else
            printf '| %s | %s | %s | %s |\n' "${LABEL[$row]}" "$method" "${reqs[0]}" "${instr[0]}"
        fi
    done
done

medians=""
((RUNS > 1)) && medians=", medians"
for method in "${METHOD_LIST[@]}"; do
    echo
    echo "Ratios, $method (instructions per request$medians):"
    limit_ratio=$(ratio "$(per limit "$method")" "$(per gateway "$method")")
    if awk -v r="$limit_ratio" 'BEGIN { exit !(r <= 1.05) }'; then
        printf '  %-30s %s× (target ≤ 1.05×: met)\n' "limiter on ÷ off:" "$limit_ratio"
    else
        printf '  %-30s %s× (target ≤ 1.05×: MISSED)\n' "limiter on ÷ off:" "$limit_ratio"
    fi
    has uring && printf '  %-30s %s×\n' "io_uring ÷ epoll (limiter on):" "$(ratio "$(per uring "$method")" "$(per limit "$method")")"
    has plugins && printf '  %-30s %s×\n' "plugins ÷ limiter on:" "$(ratio "$(per plugins "$method")" "$(per limit "$method")")"
    has routed && printf '  %-30s %s×\n' "routed ÷ plain:" "$(ratio "$(per routed "$method")" "$(per gateway "$method")")"
    for ref in nginx haproxy; do
        has "$ref" || {
            printf '  %-30s not measured (skipped or not installable)\n' "gateway ÷ $ref:"
            continue
        }
        printf '  %-30s %s×\n' "gateway ÷ $ref:" "$(ratio "$(per gateway "$method")" "$(per "$ref" "$method")")"
        printf '  %-30s %s×\n' "gateway + limiter ÷ $ref:" "$(ratio "$(per limit "$method")" "$(per "$ref" "$method")")"
    done
done

if has_method GET && has_method POST; then
    echo
    echo "POST ($POST_BYTES-byte body) ÷ GET, per proxy (instructions per request$medians):"
    for row in "${ROWS[@]}"; do
        get=$(per "$row" GET)
        post=$(per "$row" POST)
        printf '  %-46s %s× (%s → %s, %+d)\n' "${LABEL[$row]}:" "$(ratio "$post" "$get")" \
            "$(printf "%'d" "$get")" "$(printf "%'d" "$post")" $((post - get))
    done
fi

FAILED=0
