# shellcheck shell=bash
# Sourced by benches/proxy.sh, benches/tls.sh and benches/proxy_instructions.sh:
# the helpers they share (logging, a temp dir and the cleanup of everything
# started, apt installs, finding nginx/haproxy, CPU pinning, starting and
# waiting for servers, CPU time from /proc, wrk runs (GET and POST scripts)
# and their results, medians and ratios, the echo backends). Sourcing it
# defines functions and unsets the gateway's environment variables; nothing
# else happens until a script calls bench_init.
#
# A script sets (before calling the functions that read them):
#   PIN (0/1, or auto until pin_setup), READY_TIMEOUT (seconds), KEEP_TMP,
#   BACKEND_COUNT, BASE_PORT, GATEWAY_BIN, POST_BYTES (write_method_luas,
#   check_post).

# The gateway reads these; a value left in the caller's environment would
# silently override the generated configs.
unset GATEWAY_CONFIG GATEWAY_LISTEN GATEWAY_BACKENDS GATEWAY_LOG_FORMAT \
    GATEWAY_ADMIN_LISTEN GATEWAY_LOG_LEVEL GATEWAY_ADMIN_TOKEN

# ---------------------------------------------------------------- logging

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf '\nerror: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------- temp dir, cleanup

# bench_init PREFIX: makes the temp dir TMP (PREFIX.XXXXXX) and installs the
# traps that stop everything started with `start` (and a running wrk) on exit.
# The temp dir is removed on success (FAILED=0 at the end of the script)
# unless KEEP_TMP=1; it is kept, and named, on failure.
bench_init() {
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    chmod 755 "$TMP" # nginx workers (user nobody when run as root) must traverse it
    STARTED=()       # pids of every process this script started
    FAILED=1
    WRK_PID=
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

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

# stop_started PID: stop_pid, and forget PID (so that cleanup cannot hit a
# later process that got the same pid).
stop_started() {
    local pid=$1 i kept=()
    stop_pid "$pid"
    for i in "${STARTED[@]}"; do [[ $i == "$pid" ]] || kept+=("$i"); done
    STARTED=("${kept[@]}")
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
    if [[ $FAILED == 1 || ${KEEP_TMP:-0} == 1 ]]; then
        printf 'logs, configs and raw wrk output kept in %s\n' "$TMP" >&2
    else
        rm -rf "$TMP"
    fi
    exit "$status"
}

# ---------------------------------------------------------------- installing tools

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

find_haproxy() {
    command -v haproxy 2>/dev/null && return 0
    [[ -x /usr/sbin/haproxy ]] && echo /usr/sbin/haproxy && return 0
    return 1
}

# find_or_install NAME SETTING PACKAGE FINDER: prints the binary, or nothing
# when SETTING is 0 or (auto) it cannot be installed.
find_or_install() {
    local name=$1 setting=$2 package=$3 finder=$4 bin
    [[ $setting == 0 ]] && return 0
    if bin=$($finder); then
        echo "$bin"
        return 0
    fi
    log "$name not found; installing $package with apt-get (it is run privately, never as a service)"
    if apt_install "$package" && bin=$($finder); then
        echo "$bin"
    elif [[ $setting == 1 ]]; then
        die "$name is missing and apt-get install -y $package failed (see $TMP/apt.log)"
    else
        warn "$name is not installed and could not be installed; skipping the $name target"
    fi
}

# need_wrk: installs wrk with apt-get when it is missing.
need_wrk() {
    if ! command -v wrk >/dev/null; then
        log "wrk not found; installing it with apt-get"
        apt_install wrk || die "wrk is missing and apt-get install -y wrk failed (see $TMP/apt.log)"
    fi
}

# ---------------------------------------------------------------- ports, pinning, processes

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# check_ports HINT PORT...: dies when one of the ports already answers on 127.0.0.1.
check_ports() {
    local hint=$1 port
    shift
    for port in "$@"; do
        if port_in_use "$port"; then
            die "127.0.0.1:$port is already in use; stop what listens there or pick other ports ($hint)"
        fi
    done
}

# pin_setup CPUS...: resolves PIN=auto to 1 when taskset exists and every CPU
# list given is usable, else 0; sets PIN_NOTE (non-empty when pinning).
pin_setup() {
    local cpus
    case $PIN in
    auto)
        PIN=0
        if command -v taskset >/dev/null; then
            PIN=1
            for cpus in "$@"; do
                taskset -c "$cpus" true 2>/dev/null || PIN=0
            done
        fi
        if [[ $PIN == 0 ]]; then
            warn "not pinning: taskset missing or CPUs $(printf '%s/' "$@" | sed 's|/$||') not usable"
        fi
        ;;
    0 | 1) ;;
    *) die "PIN must be auto, 0 or 1" ;;
    esac
    PIN_NOTE=
    [[ $PIN == 1 ]] && PIN_NOTE=1
    return 0
}

# wait_ready NAME PID URL LOGFILE [CURL-ARG...]: poll URL with curl until it answers 200.
wait_ready() {
    local name=$1 pid=$2 url=$3 logfile=$4 deadline=$((SECONDS + READY_TIMEOUT))
    shift 4
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$logfile" >&2 || true
            die "$name (pid $pid) exited before $url answered; log above ($logfile)"
        fi
        if [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$@" "$url" || true) == 200 ]]; then
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

# Clock ticks (utime+stime) of the given pids, summed. /proc/PID/stat of a
# process counts all of its threads (gateway workers, haproxy threads).
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

# describe_host: sets HOST_DESC ("Linux x86_64, 2 CPUs (model)").
describe_host() {
    local cpu_model
    HOST_DESC="$(uname -sm), $(nproc) CPUs"
    cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1 || true)
    [[ -n $cpu_model ]] && HOST_DESC="$HOST_DESC ($cpu_model)"
    return 0
}

# ---------------------------------------------------------------- echo backends

# start_backends CPUS LISTEN_PORT ADMIN_PORT: starts BACKEND_COUNT echo backends
# (`gateway demo --backends-only`) on 127.0.0.1:BASE_PORT.. pinned to CPUS
# and waits for them; sets BACKENDS_PID and BACKEND_URLS. LISTEN_PORT and
# ADMIN_PORT only fill the config file it reads for its log settings.
start_backends() {
    local cpus=$1 listen_port=$2 admin_port=$3 i url
    BACKEND_URLS=()
    for ((i = 0; i < BACKEND_COUNT; i++)); do BACKEND_URLS+=("http://127.0.0.1:$((BASE_PORT + i))"); done
    cat >"$TMP/backends.yaml" <<EOF
# Only read for its log settings by 'gateway demo --backends-only'.
listen: 127.0.0.1:$listen_port
admin:
  listen: 127.0.0.1:$admin_port
log:
  level: warn
  format: pretty
  access: false
EOF
    start "echo backends" "$cpus" "$TMP/backends.log" \
        "$GATEWAY_BIN" demo --backends-only --backends "$BACKEND_COUNT" --base-port "$BASE_PORT" \
        -c "$TMP/backends.yaml"
    BACKENDS_PID=$STARTED_PID
    for url in "${BACKEND_URLS[@]}"; do
        wait_ready "echo backend" "$BACKENDS_PID" "$url/" "$TMP/backends.log"
    done
}

# check_round_robin LABEL URL [CURL-ARG...]: URL spreads requests over all
# backends (the echo body names the backend).
check_round_robin() {
    local label=$1 url=$2 seen i body
    shift 2
    seen=$(for ((i = 0; i < 6; i++)); do
        body=$(curl -sf --max-time 2 "$@" "$url") || die "$label: request to $url failed"
        sed -n 's/.*"backend": *"\([^"]*\)".*/\1/p' <<<"$body"
    done | sort -u | tr '\n' ' ')
    log "$label: 6 requests reached backends: ${seen% }"
    (($(wc -w <<<"$seen") == BACKEND_COUNT)) || warn "$label did not reach all $BACKEND_COUNT backends"
}

# gateway_routed_yaml: the `pools:` and `routes:` of a routed gateway config:
# one pool with the BACKEND_COUNT echo backends, nine routes (hosts,
# wildcard hosts, prefixes with methods) that the benchmarks' requests
# (GET or POST /, Host 127.0.0.1:PORT) do not match, then a catch-all, so the
# whole table is walked on every request.
gateway_routed_yaml() {
    local i
    echo "pools:"
    echo "  main:"
    echo "    backends:"
    for ((i = 0; i < BACKEND_COUNT; i++)); do echo "      - http://127.0.0.1:$((BASE_PORT + i))"; done
    echo "    health_check:"
    echo "      enabled: false"
    echo "routes:"
    for i in 1 2 3; do
        echo "  - {match: {host: api-$i.example.com, path_prefix: /v$i}, pool: main}"
        echo "  - {match: {host: \"*.cdn$i.example.com\"}, pool: main}"
        echo "  - {match: {path_prefix: /admin$i, methods: [POST]}, pool: main}"
    done
    echo "  - {match: {path_prefix: /}, pool: main}"
}

# ---------------------------------------------------------------- wrk

# write_report_lua FILE: a wrk script whose done() prints one machine-readable
# line (WRK_RESULT requests=… duration_us=… p50_us=… p99_us=… errors…).
write_report_lua() {
    cat >"$1" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_RESULT requests=%.0f duration_us=%.0f p50_us=%.0f p99_us=%.0f mean_us=%.0f connect=%.0f read=%.0f write=%.0f status=%.0f timeout=%.0f\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
end
EOF
}

# write_method_luas: the wrk scripts of the two request methods, in TMP:
# report.lua (write_report_lua), get.lua (the same: a plain GET /) and
# post.lua (POST / with POST_BYTES bytes of body; wrk adds Content-Length),
# and body.bin (that body, for check_post).
write_method_luas() {
    write_report_lua "$TMP/report.lua"
    cp "$TMP/report.lua" "$TMP/get.lua"
    {
        cat <<EOF
-- POST with a body of $POST_BYTES bytes; wrk adds Content-Length.
wrk.method = "POST"
wrk.body = string.rep("x", $POST_BYTES)
wrk.headers["Content-Type"] = "application/octet-stream"
EOF
        cat "$TMP/report.lua"
    } >"$TMP/post.lua"
    head -c "$POST_BYTES" /dev/zero | tr '\0' x >"$TMP/body.bin"
}

# check_post LABEL URL: a POST with POST_BYTES of body (TMP/body.bin, see
# write_method_luas) reaches a backend whole (the echo body names the method
# and the body size).
check_post() {
    local label=$1 url=$2 body got method
    body=$(curl -sf --max-time 5 -X POST -H 'Content-Type: application/octet-stream' \
        --data-binary "@$TMP/body.bin" "$url") || die "$label: POST to $url failed"
    got=$(sed -n 's/.*"body_bytes": *\([0-9]*\).*/\1/p' <<<"$body")
    method=$(sed -n 's/.*"method": *"\([^"]*\)".*/\1/p' <<<"$body")
    [[ $got == "$POST_BYTES" && $method == POST ]] ||
        die "$label: a POST of $POST_BYTES bytes arrived as $method with ${got:-?} bytes"
}

# run_wrk OUTFILE WRK-COMMAND...: run wrk pinned to WRK_CPUS, in the
# background so that a signal to the script interrupts the wait and cleanup
# stops wrk too.
run_wrk() {
    local out=$1 rc=0
    shift
    (pinned "$WRK_CPUS" "$@") >"$out" 2>&1 </dev/null &
    WRK_PID=$!
    wait "$WRK_PID" || rc=$?
    WRK_PID=
    return "$rc"
}

# wrk_result OUTFILE LABEL: parses the WRK_RESULT line of a wrk run into
# W_REQUESTS, W_DURATION (µs), W_P50, W_P99 (µs), W_CONNECT, W_READ,
# W_WRITE, W_STATUS (non-2xx/3xx), W_TIMEOUT and W_ERRORS (their sum); dies
# when there is no such line or no request completed.
# shellcheck disable=SC2034 # the W_* variables are the caller's
wrk_result() {
    local out=$1 label=$2 line
    line=$(grep '^WRK_RESULT' "$out") || die "no result line in wrk output for $label ($out)"
    W_REQUESTS=$(_wrk_field requests "$line")
    W_DURATION=$(_wrk_field duration_us "$line")
    W_P50=$(_wrk_field p50_us "$line")
    W_P99=$(_wrk_field p99_us "$line")
    W_CONNECT=$(_wrk_field connect "$line")
    W_READ=$(_wrk_field read "$line")
    W_WRITE=$(_wrk_field write "$line")
    W_STATUS=$(_wrk_field status "$line")
    W_TIMEOUT=$(_wrk_field timeout "$line")
    [[ ${W_REQUESTS:-0} -gt 0 ]] || die "wrk completed no request against $label ($out)"
    W_ERRORS=$((W_CONNECT + W_READ + W_WRITE + W_STATUS + W_TIMEOUT))
}
_wrk_field() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<<"$2"; }

# seconds DURATION: wrk's "10s" / "2m" / "1h" / "10" in seconds.
seconds() {
    local d=$1
    case $d in
    *h) echo $((${d%h} * 3600)) ;;
    *m) echo $((${d%m} * 60)) ;;
    *s) echo "${d%s}" ;;
    *) echo "$d" ;;
    esac
}

# ---------------------------------------------------------------- numbers

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b + 0 == 0) print "n/a"; else printf "%.2f\n", a / b }'; }

fmt_latency() { # microseconds -> "850 µs" / "1.23 ms"
    awk -v us="$1" 'BEGIN { if (us < 1000) printf "%d µs", us + 0.5; else printf "%.2f ms", us / 1000 }'
}

# stats V...: "median min max" of the non-empty numeric values, or nothing.
stats() {
    local v
    for v in "$@"; do [[ -n $v && $v != n/a ]] && echo "$v"; done | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) exit; m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; print m, v[1], v[NR] }'
}

# fmt FIELD VALUE: a value for display (latencies in ms).
fmt() {
    case $1 in
    rps | percore | util) awk -v v="$2" 'BEGIN { printf "%.0f", v }' ;;
    cpu) awk -v v="$2" 'BEGIN { printf "%.1f", v }' ;;
    p50 | p99) awk -v v="$2" 'BEGIN { printf "%.2f", v / 1000 }' ;;
    ratio) awk -v v="$2" 'BEGIN { printf "%.2f", v }' ;;
    *) echo "$2" ;;
    esac
}

# cell FIELD V...: "median (min–max)" (just the value for one run; — for none).
cell() {
    local field=$1 s med lo hi
    shift
    s=$(stats "$@")
    [[ -n $s ]] || {
        echo "—"
        return
    }
    read -r med lo hi <<<"$s"
    if (($# == 1)); then
        fmt "$field" "$med"
    else
        printf '%s (%s–%s)' "$(fmt "$field" "$med")" "$(fmt "$field" "$lo")" "$(fmt "$field" "$hi")"
    fi
}
