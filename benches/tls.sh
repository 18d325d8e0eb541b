#!/usr/bin/env bash
# TLS termination benchmark: the gateway's HTTPS listener (rustls with ring)
# against nginx and HAProxy (OpenSSL), each terminating TLS for the same three
# echo backends, all on loopback only. Per target it measures, with wrk:
#
#   A. full handshakes     wrk -H 'Connection: close': every request is a new
#                          TCP connection and a full TLS handshake. Plain wrk
#                          would resume: it reuses its SSL object across
#                          reconnects and OpenSSL keeps the session (TLS 1.3
#                          ticket) in it, so every handshake after a
#                          connection's first is resumed. A 10-line LD_PRELOAD
#                          shim (compiled here with cc) drops that session in
#                          SSL_clear, so the client offers nothing to resume;
#                          a preflight checks it against a private server that
#                          reports $ssl_session_reused.
#   B. resumed handshakes  the same with plain wrk (TLS 1.3 PSK + ECDHE from
#                          the previous connection's ticket); RESUMED=0 skips it
#   C. keep-alive          wrk with keep-alive, -c CONNECTIONS
#
# and reports requests/s (= handshakes/s for A and B), p50/p99 for C and the
# terminator's CPU time per request: utime+stime from /proc/PID/stat (nginx:
# master + worker) read just before and after the measured run, divided by
# the requests wrk completed. With the default pinning the client (ECDHE +
# ECDSA verify per handshake) can saturate its CPU before the terminator
# does, so handshakes/s is partly the client's figure; CPU µs per handshake
# on the terminator is the fair one, shown also as handshakes/s per core
# (1e6 / µs); the busy % of the terminator and of wrk's CPU (/proc/stat) tell
# which side was the limit. Each wrk run also counts the TCP connects it
# caused (/proc/net/snmp ActiveOpens): about 1 per request in A and B (a new
# client connection; the proxies keep their backend connections), about 0 in C.
#
# Targets (the same ECDSA P-256 certificate, made here with openssl):
#   gateway  `gateway run` with `tls.listen`, proxy.workers 1, round robin,
#            access log and active health checks off
#   nginx    worker_processes 1, `listen ... ssl`, TLS 1.2/1.3, the upstream
#            of benches/nginx_conf.sh (keepalive 64, HTTP/1.1, Connection "")
#   haproxy  nbthread 1, `bind ... ssl crt cert+key.pem alpn http/1.1`,
#            mode http, http-reuse always, timeouts 10s, no logging, run in
#            the foreground (-db): benches/haproxy_conf.sh's config (the one
#            benches/proxy.sh measures) with the listener switched to TLS
# Each target is checked first with curl --cacert over https://localhost:PORT/
# (and round robin over the 3 backends); the negotiated protocol, cipher,
# key exchange group and signature, TLS 1.2, ALPN and whether a TLS 1.3
# session resumes are printed (openssl s_client).
#
# RUNS=N repeats the whole measurement N times (target order rotated per run)
# and prints per-run rows, then per figure the median and the spread (min–max),
# the ratios gateway/nginx, gateway/haproxy and gateway/better-of-the-two (CPU
# per handshake and per keep-alive request: lower is better; the target is
# gateway ≤ 1.1× the better of nginx and haproxy) and markdown tables.
#
# Usage (from anywhere; build the gateway first: cargo build --release -p gateway):
#   benches/tls.sh
#   RUNS=5 DURATION=15s benches/tls.sh
#
# Environment (defaults in brackets):
#   RUNS [3]             repetitions of the whole measurement
#   DURATION [10s]       length of each measured wrk run
#   WARMUP [2s]          wrk warm-up run before each measured run (not counted)
#   CONNECTIONS [64]     wrk -c for keep-alive (C)
#   HS_CONNECTIONS [$CONNECTIONS]  wrk -c for the handshake runs (A, B)
#   THREADS [1]          wrk -t
#   RESUMED [1]          1: also measure resumed handshakes (B); 0: skip
#   PIN [auto]           auto: pin with taskset when it exists and the CPUs
#                        below are usable; 0: no pinning
#   WRK_CPUS [1]         CPUs for wrk (taskset -c)
#   PROXY_CPUS [0]       CPUs for the TLS terminator under test
#   BACKEND_CPUS [0]     CPUs for the echo backends
#                        The default puts the load generator alone on CPU 1 and
#                        the server side (terminator + backends) on CPU 0. A
#                        pinned gateway sees one CPU (and proxy.workers is 1),
#                        nginx runs one worker process, haproxy one thread.
#   BASE_PORT [9101]     first echo backend port (3 backends: BASE_PORT..+2)
#   GATEWAY_PORT [18180] (the gateway's plain listener), GATEWAY_TLS_PORT [18443],
#   NGINX_TLS_PORT [18444], HAPROXY_TLS_PORT [18445], ADMIN_PORT [19191],
#   VERIFY_PORT [18446]  (the private server of the resumption preflight)
#   NGINX [auto], HAPROXY [auto]  auto: bench it when installed/installable;
#                        0: skip; 1: required (fail when it cannot be installed)
#   GATEWAY_BIN          gateway binary [${CARGO_TARGET_DIR:-<repo>/target}/release/gateway]
#   KEEP_TMP [0]         1: keep the temp dir (certificate, configs, logs, raw wrk output)
#
# Everything binds 127.0.0.1; everything the script starts is stopped on exit.
# The script does not build the gateway. Needs: bash, curl, openssl, cc (for
# the shim), wrk and (optionally) nginx and haproxy; wrk, nginx-light and
# haproxy are installed with `apt-get install -y` when missing (apt-get update
# only if that fails); they are run privately, never as services.

set -euo pipefail

RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-64}
HS_CONNECTIONS=${HS_CONNECTIONS:-$CONNECTIONS}
THREADS=${THREADS:-1}
RESUMED=${RESUMED:-1}
PIN=${PIN:-auto}
WRK_CPUS=${WRK_CPUS:-1}
PROXY_CPUS=${PROXY_CPUS:-0}
BACKEND_CPUS=${BACKEND_CPUS:-0}
BASE_PORT=${BASE_PORT:-9101}
GATEWAY_PORT=${GATEWAY_PORT:-18180}
GATEWAY_TLS_PORT=${GATEWAY_TLS_PORT:-18443}
NGINX_TLS_PORT=${NGINX_TLS_PORT:-18444}
HAPROXY_TLS_PORT=${HAPROXY_TLS_PORT:-18445}
VERIFY_PORT=${VERIFY_PORT:-18446}
ADMIN_PORT=${ADMIN_PORT:-19191}
NGINX=${NGINX:-auto}
HAPROXY=${HAPROXY:-auto}
KEEP_TMP=${KEEP_TMP:-0}
READY_TIMEOUT=${READY_TIMEOUT:-30} # seconds to wait for a port to answer

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
# shellcheck source=benches/nginx_conf.sh
source "$ROOT/benches/nginx_conf.sh"
# shellcheck source=benches/haproxy_conf.sh
source "$ROOT/benches/haproxy_conf.sh"
GATEWAY_BIN=${GATEWAY_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/gateway}
BACKEND_COUNT=3

# ---------------------------------------------------------------- helpers
# (the shared ones are in benches/lib.sh)

bench_init gateway-tls-bench

# TCP connections opened by connect() on this host so far (loopback included).
tcp_active_opens() {
    awk '/^Tcp:/ { if (!col) { for (i = 1; i <= NF; i++) if ($i == "ActiveOpens") col = i } else print $col }' \
        /proc/net/snmp
}

# cpu_jiffies CPU: "busy total" jiffies of one CPU from /proc/stat (busy =
# total - idle - iowait), to tell whether the client's CPU was saturated.
cpu_jiffies() {
    awk -v cpu="cpu$1" '$1 == cpu { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}


# wrk prints a machine-readable line at the end through this script.
write_report_lua "$TMP/report.lua"

# handshake was resumed and "." when it was full (nginx's $ssl_session_reused;
# haproxy's ssl_fc_is_resumed gives 1 or 0).
cat >"$TMP/sessions.lua" <<'EOF'
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) full = 0; resumed = 0 end
function response(status, headers, body)
  local c = body:sub(1, 1)
  if c == "r" or c == "1" then resumed = resumed + 1
  elseif c == "." or c == "0" then full = full + 1 end
end
function done(summary, latency, requests)
  local f, r = 0, 0
  for _, t in ipairs(threads) do f = f + t:get("full"); r = r + t:get("resumed") end
  io.write(string.format("TLS_SESSIONS full=%d resumed=%d\n", f, r))
end
EOF

# The shim: wrk calls SSL_shutdown + SSL_clear and reuses the SSL object for
# the next connection; SSL_clear keeps a cleanly shut down session, so the next
# ClientHello offers it. Dropping it first makes every handshake a full one.
cat >"$TMP/noresume.c" <<'EOF'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
typedef struct ssl_st SSL;
typedef struct ssl_session_st SSL_SESSION;
extern int SSL_set_session(SSL *s, SSL_SESSION *session);
int SSL_clear(SSL *s) {
    static int (*real)(SSL *);
    if (real == NULL) real = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_clear");
    SSL_set_session(s, NULL);
    return real(s);
}
EOF

# wrk_cmd MODE: sets WRK_CMD to the wrk command line (without -d and URL) for a mode.
wrk_cmd() {
    case $1 in
    full) WRK_CMD=(env "LD_PRELOAD=$TMP/noresume.so" wrk -t"$THREADS" -c"$HS_CONNECTIONS" --latency
        -s "$TMP/report.lua" -H "Connection: close") ;;
    resumed) WRK_CMD=(wrk -t"$THREADS" -c"$HS_CONNECTIONS" --latency -s "$TMP/report.lua" -H "Connection: close") ;;
    ka) WRK_CMD=(wrk -t"$THREADS" -c"$CONNECTIONS" --latency -s "$TMP/report.lua") ;;
    esac
}
declare -A MODE_LABEL=([full]="full handshakes (Connection: close, no resumption)"
    [resumed]="resumed handshakes (Connection: close, TLS 1.3 tickets)"
    [ka]="keep-alive")

# Results: R["KEY|MODE|RUN|FIELD"], FIELD one of rps p50 p99 cpu util err opens.
declare -A R
val() { echo "${R["$1|$2|$3|$4"]:-}"; }

# measure KEY RUN MODE: warm up, then measure the target KEY; fills R.
measure() {
    local key=$1 run=$2 mode=$3 url="https://localhost:${TLS_PORT[$1]}/"
    local label="${LABEL[$key]} — ${MODE_LABEL[$mode]}" out="$TMP/wrk-$key-$mode-$run.txt" conns=$CONNECTIONS
    local WRK_CMD=()
    wrk_cmd "$mode"
    local cmd=("${WRK_CMD[@]}")
    [[ $mode == ka ]] || conns=$HS_CONNECTIONS
    log "run $run, $label: warm-up ${WARMUP}"
    run_wrk "$TMP/wrk-$key-$mode-$run-warmup.txt" "${cmd[@]}" -d"$WARMUP" "$url" ||
        die "wrk warm-up against $label failed: $(tail -n 5 "$TMP/wrk-$key-$mode-$run-warmup.txt")"

    local pids=() before after opens_before opens_after
    mapfile -t pids < <(${PIDS_OF[$key]})
    local client_before=() client_after=()
    before=$(cpu_ticks "${pids[@]}")
    opens_before=$(tcp_active_opens)
    [[ -n $CLIENT_CPU ]] && read -r -a client_before <<<"$(cpu_jiffies "$CLIENT_CPU")"
    log "run $run, $label: measuring ${DURATION} (wrk -t$THREADS -c$conns)"
    run_wrk "$out" "${cmd[@]}" -d"$DURATION" "$url" ||
        die "wrk against $label failed: $(tail -n 5 "$out")"
    after=$(cpu_ticks "${pids[@]}")
    opens_after=$(tcp_active_opens)
    [[ -n $CLIENT_CPU ]] && read -r -a client_after <<<"$(cpu_jiffies "$CLIENT_CPU")"

    sed '/^WRK_RESULT/d; s/^/    /' "$out"
    wrk_result "$out" "$label"
    local requests=$W_REQUESTS duration=$W_DURATION p50=$W_P50 p99=$W_P99
    local connect=$W_CONNECT rd=$W_READ wr=$W_WRITE status=$W_STATUS timeout=$W_TIMEOUT

    local k="$key|$mode|$run" ticks=$((after - before))
    R["$k|rps"]=$(awk -v n="$requests" -v us="$duration" 'BEGIN { printf "%.0f", n / (us / 1e6) }')
    R["$k|p50"]=$p50
    R["$k|p99"]=$p99
    R["$k|err"]=$((connect + rd + wr + status + timeout))
    R["$k|cpu"]=$(awk -v t="$ticks" -v hz="$CLK_TCK" -v n="$requests" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
    R["$k|util"]=$(awk -v t="$ticks" -v hz="$CLK_TCK" -v us="$duration" 'BEGIN { printf "%.0f", t / hz * 100 / (us / 1e6) }')
    R["$k|client"]=
    if [[ -n $CLIENT_CPU ]]; then
        R["$k|client"]=$(awk -v b=$((client_after[0] - client_before[0])) -v t=$((client_after[1] - client_before[1])) \
            'BEGIN { if (t > 0) printf "%.0f", b * 100 / t }')
    fi
    R["$k|opens"]=$(awk -v o=$((opens_after - opens_before)) -v n="$requests" 'BEGIN { printf "%.2f", o / n }')
    if ((R["$k|err"] > 0)); then
        warn "$label: $status non-2xx/3xx responses, socket errors connect $connect read $rd write $wr timeout $timeout"
    fi
    local per_core
    per_core=$(awk -v c="${R["$k|cpu"]}" 'BEGIN { if (c > 0) printf "%.0f", 1e6 / c; else print "n/a" }')
    if [[ $mode == ka ]]; then
        printf '  -> %s: %s req/s, p50 %.2f ms, p99 %.2f ms, terminator CPU %s µs/request (%s%% busy, %s process(es))%s, TCP connects/request %s, errors %s\n\n' \
            "$label" "${R["$k|rps"]}" "$(awk -v u="$p50" 'BEGIN { print u / 1000 }')" \
            "$(awk -v u="$p99" 'BEGIN { print u / 1000 }')" "${R["$k|cpu"]}" "${R["$k|util"]}" \
            "${#pids[@]}" "${R["$k|client"]:+, client CPU $CLIENT_CPU ${R["$k|client"]}% busy}" "${R["$k|opens"]}" "${R["$k|err"]}"
    else
        printf '  -> %s: %s handshakes/s, terminator CPU %s µs/handshake = %s handshakes/s per core (%s%% busy, %s process(es))%s, TCP connects/request %s, errors %s\n\n' \
            "$label" "${R["$k|rps"]}" "${R["$k|cpu"]}" "$per_core" "${R["$k|util"]}" \
            "${#pids[@]}" "${R["$k|client"]:+, client CPU $CLIENT_CPU ${R["$k|client"]}% busy}" "${R["$k|opens"]}" "${R["$k|err"]}"
        if awk -v o="${R["$k|opens"]}" 'BEGIN { exit !(o < 0.95) }'; then
            warn "$label: fewer TCP connects than requests (${R["$k|opens"]}/request): connections were reused, not every request had its own handshake"
        fi
    fi
}

# curl_tls PORT ARG...: curl over https://localhost:PORT, verifying the certificate.
curl_tls() {
    local port=$1
    shift
    curl -sS --max-time 5 --cacert "$CERT" --resolve "localhost:$port:127.0.0.1" "$@"
}

# check_tls KEY: the target serves over TLS with our certificate, spreads
# requests over all backends; prints what a client negotiates with it.
check_tls() {
    local key=$1 port=${TLS_PORT[$1]} seen i body size
    local url="https://localhost:$port/"
    seen=$(for ((i = 0; i < 6; i++)); do
        body=$(curl_tls "$port" -f "$url") || die "${LABEL[$key]}: curl --cacert $CERT $url failed"
        sed -n 's/.*"backend": *"\([^"]*\)".*/\1/p' <<<"$body"
    done | sort -u | tr '\n' ' ')
    log "${LABEL[$key]}: 6 requests over https (certificate verified) reached backends: ${seen% }"
    (($(wc -w <<<"$seen") == BACKEND_COUNT)) || warn "${LABEL[$key]} did not reach all $BACKEND_COUNT backends"
    size=$(curl_tls "$port" -o /dev/null -w '%{size_download}' "$url")
    local alpn
    TLS_INFO[$key]=$(tls_params "$port")
    alpn=$(timeout 5 openssl s_client -alpn h2,http/1.1 -connect "127.0.0.1:$port" -servername localhost </dev/null 2>/dev/null |
        sed -n 's/^ALPN protocol: //p' | head -n 1 || true)
    printf '%s on https://localhost:%s: %s; TLS 1.2: %s; ALPN when offered h2,http/1.1: %s; TLS 1.3 resumption with its ticket: %s; response body %s bytes\n' \
        "${LABEL[$key]}" "$port" "${TLS_INFO[$key]}" "$(tls_params "$port" -tls1_2)" "${alpn:-none}" \
        "$(resumes "$port")" "$size"
}

# resumes PORT: "yes" when a second s_client connection resumes the session
# (TLS 1.3 ticket) the first one received with its response.
resumes() {
    local port=$1 sess="$TMP/session-$1.pem"
    printf 'GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' |
        timeout 5 openssl s_client -connect "127.0.0.1:$port" -servername localhost -sess_out "$sess" -quiet \
            >/dev/null 2>&1 || true
    if [[ -s $sess ]] && timeout 5 openssl s_client -connect "127.0.0.1:$port" -servername localhost \
        -sess_in "$sess" </dev/null 2>/dev/null | grep -q '^Reused, '; then
        echo yes
    else
        echo no
    fi
}

# tls_params PORT [S_CLIENT-ARG...]: "TLSv1.3 TLS_AES_256_GCM_SHA384, X25519, ECDSA+SHA256",
# what openssl s_client negotiates (the same OpenSSL defaults as wrk's client).
tls_params() {
    local port=$1 out
    shift
    out=$(timeout 5 openssl s_client "$@" -connect "127.0.0.1:$port" -servername localhost </dev/null 2>/dev/null || true)
    awk '
        /^New, / { sub(/^New, /, ""); sub(/, Cipher is /, " "); proto = $0 }
        /^Server Temp Key: / { sub(/^Server Temp Key: /, ""); sub(/,.*/, ""); group = $0 }
        /^Peer signature type: / { sig = $4 }
        /^Peer signing digest: / { digest = $4 }
        END {
            if (proto == "" || proto ~ /NONE/) { print "handshake failed"; exit }
            printf "%s, %s, %s%s\n", proto, group, sig, digest != "" ? "+" digest : ""
        }' <<<"$out"
}

# ---------------------------------------------------------------- preflight

command -v curl >/dev/null || die "curl is required"
command -v openssl >/dev/null || die "openssl is required (certificate, s_client)"
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer (got $RUNS)"
[[ $DURATION =~ ^[0-9]+[smh]?$ ]] || die "DURATION must look like 10s (got $DURATION)"
[[ $WARMUP =~ ^[0-9]+[smh]?$ ]] || die "WARMUP must look like 2s (got $WARMUP)"
[[ $CONNECTIONS =~ ^[0-9]+$ && $HS_CONNECTIONS =~ ^[0-9]+$ && $THREADS =~ ^[0-9]+$ ]] ||
    die "CONNECTIONS, HS_CONNECTIONS and THREADS must be integers"
((CONNECTIONS >= THREADS && HS_CONNECTIONS >= THREADS)) ||
    die "CONNECTIONS ($CONNECTIONS) and HS_CONNECTIONS ($HS_CONNECTIONS) must be >= THREADS ($THREADS)"
[[ $RESUMED == 0 || $RESUMED == 1 ]] || die "RESUMED must be 0 or 1"

need_wrk
CC=$(command -v cc || command -v gcc || true)
[[ -n $CC ]] || die "a C compiler (cc) is needed for the no-resumption shim (apt-get install -y gcc libc6-dev)"
"$CC" -O2 -shared -fPIC -o "$TMP/noresume.so" "$TMP/noresume.c" -ldl >"$TMP/cc.log" 2>&1 ||
    die "cannot compile the no-resumption shim: $(cat "$TMP/cc.log")"

NGINX_BIN=$(find_or_install nginx "$NGINX" nginx-light find_nginx)
HAPROXY_BIN=$(find_or_install haproxy "$HAPROXY" haproxy find_haproxy)

CLK_TCK=$(getconf CLK_TCK)
pin_setup "$WRK_CPUS" "$PROXY_CPUS" "$BACKEND_CPUS"
# The client's CPU, when wrk is pinned to exactly one: its busy % is reported.
CLIENT_CPU=
[[ $PIN == 1 && $WRK_CPUS =~ ^[0-9]+$ ]] && CLIENT_CPU=$WRK_CPUS

ports=()
for ((i = 0; i < BACKEND_COUNT; i++)); do ports+=($((BASE_PORT + i))); done
ports+=("$GATEWAY_PORT" "$GATEWAY_TLS_PORT" "$ADMIN_PORT" "$VERIFY_PORT")
[[ -n $NGINX_BIN ]] && ports+=("$NGINX_TLS_PORT")
[[ -n $HAPROXY_BIN ]] && ports+=("$HAPROXY_TLS_PORT")
check_ports "BASE_PORT, GATEWAY_PORT, GATEWAY_TLS_PORT, NGINX_TLS_PORT, HAPROXY_TLS_PORT, ADMIN_PORT, VERIFY_PORT" "${ports[@]}"
if pgrep -x haproxy >/dev/null || pgrep -x nginx >/dev/null; then
    warn "other nginx/haproxy processes are running (not started here); they are not measured (only this script's pids are read) but they share the CPUs"
fi

[[ -x $GATEWAY_BIN ]] ||
    die "gateway binary not found at $GATEWAY_BIN (build it: cargo build --release -p gateway, or set GATEWAY_BIN)"

# ---------------------------------------------------------------- certificate

CERT=$TMP/cert.pem
KEY=$TMP/key.pem
BOTH=$TMP/cert+key.pem # haproxy wants the certificate and its key in one file
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$KEY" -out "$CERT" >"$TMP/openssl-req.log" 2>&1 ||
    die "openssl req failed: $(cat "$TMP/openssl-req.log")"
cat "$CERT" "$KEY" >"$BOTH"

# ---------------------------------------------------------------- resumption preflight

# Checks against a private server that reports whether each handshake was
# resumed that (1) plain wrk with Connection: close resumes and (2) wrk with
# the shim never does. Prints one line; dies when the shim does not work.
verify_full_handshakes() {
    local kind conf pid url="https://localhost:$VERIFY_PORT/"
    if [[ -n $NGINX_BIN ]]; then
        kind=nginx
        local vp="$TMP/verify-nginx"
        mkdir -p "$vp/logs" "$vp/tmp"
        cat >"$vp/nginx.conf" <<CONF
worker_processes 1;
pid $vp/nginx.pid;
error_log $vp/logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $vp/tmp/body;
    proxy_temp_path $vp/tmp/proxy;
    fastcgi_temp_path $vp/tmp/fastcgi;
    uwsgi_temp_path $vp/tmp/uwsgi;
    scgi_temp_path $vp/tmp/scgi;
    server {
        listen 127.0.0.1:$VERIFY_PORT ssl;
        ssl_certificate $CERT;
        ssl_certificate_key $KEY;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / { return 200 "\$ssl_session_reused\n"; }
    }
}
CONF
        start "resumption check (nginx)" "$PROXY_CPUS" "$TMP/verify-nginx.log" \
            "$NGINX_BIN" -p "$vp" -e "$vp/logs/error.log" -c "$vp/nginx.conf" -g 'daemon off;'
    elif [[ -n $HAPROXY_BIN ]]; then
        kind=haproxy
        conf="$TMP/verify-haproxy.cfg"
        cat >"$conf" <<CONF
global
    nbthread 1
defaults
    mode http
    timeout connect 10s
    timeout client 10s
    timeout server 10s
frontend verify
    bind 127.0.0.1:$VERIFY_PORT ssl crt $BOTH alpn http/1.1
    http-request return status 200 content-type text/plain lf-string "%[ssl_fc_is_resumed]\n"
CONF
        start "resumption check (haproxy)" "$PROXY_CPUS" "$TMP/verify-haproxy.log" "$HAPROXY_BIN" -f "$conf" -db
    else
        warn "neither nginx nor haproxy available: cannot check that the wrk shim prevents resumption"
        return 0
    fi
    pid=$STARTED_PID
    wait_ready "resumption check ($kind)" "$pid" "$url" "$TMP/verify-$kind.log" --cacert "$CERT" \
        --resolve "localhost:$VERIFY_PORT:127.0.0.1"
    local plain shim
    run_wrk "$TMP/verify-plain.txt" wrk -t1 -c4 -d1s -s "$TMP/sessions.lua" -H "Connection: close" "$url" ||
        die "wrk against the resumption check server failed: $(tail -n 5 "$TMP/verify-plain.txt")"
    run_wrk "$TMP/verify-shim.txt" env "LD_PRELOAD=$TMP/noresume.so" wrk -t1 -c4 -d1s -s "$TMP/sessions.lua" \
        -H "Connection: close" "$url" ||
        die "wrk (with the shim) against the resumption check server failed: $(tail -n 5 "$TMP/verify-shim.txt")"
    plain=$(grep '^TLS_SESSIONS' "$TMP/verify-plain.txt") || die "no session count from wrk ($TMP/verify-plain.txt)"
    shim=$(grep '^TLS_SESSIONS' "$TMP/verify-shim.txt") || die "no session count from wrk ($TMP/verify-shim.txt)"
    stop_pid "$pid"
    local pf pr sf sr
    pf=$(sed -n 's/.* full=\([0-9]*\).*/\1/p' <<<"$plain")
    pr=$(sed -n 's/.* resumed=\([0-9]*\).*/\1/p' <<<"$plain")
    sf=$(sed -n 's/.* full=\([0-9]*\).*/\1/p' <<<"$shim")
    sr=$(sed -n 's/.* resumed=\([0-9]*\).*/\1/p' <<<"$shim")
    RESUMPTION_NOTE="resumption check ($kind \$ssl_session_reused-style server, wrk -c4 Connection: close, 1s): plain wrk $pr of $((pf + pr)) handshakes resumed; wrk + shim $sr of $((sf + sr)) resumed"
    log "$RESUMPTION_NOTE"
    ((sf > 0)) || die "the resumption check saw no full handshake with the shim ($TMP/verify-shim.txt)"
    ((sr == 0)) || die "wrk still resumed sessions with the LD_PRELOAD shim (is wrk linked statically with OpenSSL?)"
}
RESUMPTION_NOTE="resumption not checked"

# ---------------------------------------------------------------- backends

start_backends "$BACKEND_CPUS" "$GATEWAY_PORT" "$ADMIN_PORT"

verify_full_handshakes

# ---------------------------------------------------------------- targets

TARGETS=()
declare -A LABEL TLS_PORT PIDS_OF TLS_INFO VERSION

# 1. gateway
cat >"$TMP/gateway.yaml" <<EOF
listen: 127.0.0.1:$GATEWAY_PORT
backends:
$(for url in "${BACKEND_URLS[@]}"; do echo "  - $url"; done)
balancer:
  algorithm: round_robin
health_check:
  # nginx and haproxy (no 'check' on the servers) probe nothing either.
  enabled: false
  interval: 10s
proxy:
  workers: 1
admin:
  listen: 127.0.0.1:$ADMIN_PORT
log:
  # info: for the startup line; with the access log off nothing is logged per request.
  level: info
  format: json
  access: false
tls:
  listen: 127.0.0.1:$GATEWAY_TLS_PORT
  certificates:
    - {cert: $CERT, key: $KEY}
EOF
"$GATEWAY_BIN" validate -c "$TMP/gateway.yaml" >"$TMP/gateway-validate.txt" 2>&1 ||
    die "generated gateway config is invalid: $(cat "$TMP/gateway-validate.txt")"
start gateway "$PROXY_CPUS" "$TMP/gateway.log" "$GATEWAY_BIN" run -c "$TMP/gateway.yaml" --log-format json
GATEWAY_PID=$STARTED_PID
wait_ready gateway "$GATEWAY_PID" "https://localhost:$GATEWAY_TLS_PORT/" "$TMP/gateway.log" \
    --cacert "$CERT" --resolve "localhost:$GATEWAY_TLS_PORT:127.0.0.1"
https_addr=$(grep '"event":"listening"' "$TMP/gateway.log" | sed -n 's/.*"https":"\([^"]*\)".*/\1/p' | head -n 1)
[[ $https_addr == "127.0.0.1:$GATEWAY_TLS_PORT" ]] ||
    die "the gateway's listening line does not show https 127.0.0.1:$GATEWAY_TLS_PORT (got '${https_addr}'; $TMP/gateway.log)"
gateway_version=$("$GATEWAY_BIN" --version 2>/dev/null || echo gateway)
TARGETS+=(gateway)
LABEL[gateway]=gateway
VERSION[gateway]=$gateway_version
TLS_PORT[gateway]=$GATEWAY_TLS_PORT
gateway_pids() { echo "$GATEWAY_PID"; }
PIDS_OF[gateway]=gateway_pids

# 2. nginx: benches/nginx_conf.sh's config with the listener switched to TLS.
if [[ -n $NGINX_BIN ]]; then
    nginx_version=$("$NGINX_BIN" -v 2>&1 | sed -n 's|.*nginx/\([^ ]*\).*|\1|p')
    NP="$TMP/nginx"
    mkdir -p "$NP/logs" "$NP/tmp"
    chmod 755 "$NP"
    nginx_conf "$NP" "$NGINX_TLS_PORT" "$BASE_PORT" "$BACKEND_COUNT" |
        sed "s|^\( *\)listen 127.0.0.1:$NGINX_TLS_PORT;|\1listen 127.0.0.1:$NGINX_TLS_PORT ssl;\n\1ssl_certificate $CERT;\n\1ssl_certificate_key $KEY;\n\1ssl_protocols TLSv1.2 TLSv1.3;|" \
            >"$NP/nginx.conf"
    grep -q "listen 127.0.0.1:$NGINX_TLS_PORT ssl;" "$NP/nginx.conf" ||
        die "could not switch the nginx_conf listener to ssl ($NP/nginx.conf)"
    "$NGINX_BIN" -t -p "$NP" -e "$NP/logs/error.log" -c "$NP/nginx.conf" >"$TMP/nginx-test.txt" 2>&1 ||
        die "nginx rejected the generated config: $(cat "$TMP/nginx-test.txt")"
    start nginx "$PROXY_CPUS" "$TMP/nginx.log" \
        "$NGINX_BIN" -p "$NP" -e "$NP/logs/error.log" -c "$NP/nginx.conf" -g 'daemon off;'
    NGINX_PID=$STARTED_PID
    wait_ready nginx "$NGINX_PID" "https://localhost:$NGINX_TLS_PORT/" "$NP/logs/error.log" \
        --cacert "$CERT" --resolve "localhost:$NGINX_TLS_PORT:127.0.0.1"
    nginx_pids() { with_children "$NGINX_PID"; }
    (($(nginx_pids | wc -l) >= 2)) || die "nginx master $NGINX_PID has no worker process"
    TARGETS+=(nginx)
    LABEL[nginx]="nginx"
    VERSION[nginx]="nginx $nginx_version"
    TLS_PORT[nginx]=$NGINX_TLS_PORT
    PIDS_OF[nginx]=nginx_pids
fi

# 3. haproxy
if [[ -n $HAPROXY_BIN ]]; then
    haproxy_version=$("$HAPROXY_BIN" -v 2>&1 | sed -n 's/^HAProxy version \([^ ]*\).*/\1/p' | head -n 1)
    HCFG="$TMP/haproxy.cfg"
    # benches/haproxy_conf.sh's config with the listener switched to TLS.
    haproxy_conf "$HAPROXY_TLS_PORT" "$BASE_PORT" "$BACKEND_COUNT" 1 "ssl crt $BOTH alpn http/1.1" https \
        "    ssl-default-bind-options ssl-min-ver TLSv1.2" >"$HCFG"
    "$HAPROXY_BIN" -c -f "$HCFG" >"$TMP/haproxy-test.txt" 2>&1 ||
        die "haproxy rejected the generated config: $(cat "$TMP/haproxy-test.txt")"
    start haproxy "$PROXY_CPUS" "$TMP/haproxy.log" "$HAPROXY_BIN" -f "$HCFG" -db
    HAPROXY_PID=$STARTED_PID
    wait_ready haproxy "$HAPROXY_PID" "https://localhost:$HAPROXY_TLS_PORT/" "$TMP/haproxy.log" \
        --cacert "$CERT" --resolve "localhost:$HAPROXY_TLS_PORT:127.0.0.1"
    haproxy_pids() { with_children "$HAPROXY_PID"; }
    TARGETS+=(haproxy)
    LABEL[haproxy]="haproxy"
    VERSION[haproxy]="HAProxy $haproxy_version"
    TLS_PORT[haproxy]=$HAPROXY_TLS_PORT
    PIDS_OF[haproxy]=haproxy_pids
fi

# ---------------------------------------------------------------- header

describe_host
host_desc=$HOST_DESC
if [[ $PIN == 1 ]]; then
    pin_desc="wrk on CPU $WRK_CPUS, TLS terminator on CPU $PROXY_CPUS, echo backends on CPU $BACKEND_CPUS (taskset)"
else
    pin_desc="no CPU pinning"
fi
wrk_version=$(wrk -v 2>&1 | head -n 1 | awk '{print $1, $2}' || true)
openssl_version=$(openssl version 2>/dev/null | awk '{print $1, $2}')
versions="$gateway_version (rustls, ring)"
for key in "${TARGETS[@]}"; do [[ $key == gateway ]] || versions="$versions, ${VERSION[$key]}"; done

MODES=(full)
[[ $RESUMED == 1 ]] && MODES+=(resumed)
MODES+=(ka)

printf '\nBenchmark: %s run(s); per target and run: full handshakes (wrk -c%s, Connection: close, resumption disabled in the client)%s, keep-alive (wrk -c%s); wrk -t%s -d%s after a %s warm-up; %s\n' \
    "$RUNS" "$HS_CONNECTIONS" "$([[ $RESUMED == 1 ]] && echo ", resumed handshakes (same, plain wrk)")" \
    "$CONNECTIONS" "$THREADS" "$DURATION" "$WARMUP" "$pin_desc"
printf 'Host: %s; CLK_TCK=%s; %s; %s; client %s\n' "$host_desc" "$CLK_TCK" "$versions" "${wrk_version:-wrk}" "$openssl_version"
printf 'Certificate: ECDSA P-256 (prime256v1), self-signed, CN=localhost\n'
echo "$RESUMPTION_NOTE"
for key in "${TARGETS[@]}"; do check_tls "$key"; done
echo

# ---------------------------------------------------------------- runs

for ((run = 1; run <= RUNS; run++)); do
    # Rotate the order so that no target always goes first (or last).
    n=${#TARGETS[@]}
    order=()
    for ((i = 0; i < n; i++)); do order+=("${TARGETS[(i + run - 1) % n]}"); done
    printf '=== run %s of %s (order: %s)\n\n' "$run" "$RUNS" "${order[*]}"
    for key in "${order[@]}"; do
        for mode in "${MODES[@]}"; do measure "$key" "$run" "$mode"; done
    done
done

for key in "${TARGETS[@]}"; do
    alive=$(${PIDS_OF[$key]} | paste -sd ' ' -)
    for pid in $alive; do kill -0 "$pid" 2>/dev/null || die "${LABEL[$key]} (pid $pid) died during the benchmark"; done
done
gateway_log_lines=$(wc -l <"$TMP/gateway.log")

# ---------------------------------------------------------------- summary

# series KEY MODE FIELD: the per-run values (percore: 1e6 / cpu).
series() {
    local key=$1 mode=$2 field=$3 run v
    for ((run = 1; run <= RUNS; run++)); do
        if [[ $field == percore ]]; then
            v=$(val "$key" "$mode" "$run" cpu)
            awk -v c="$v" 'BEGIN { if (c > 0) printf "%.0f\n", 1e6 / c; else print "" }'
        else
            val "$key" "$mode" "$run" "$field"
        fi
    done
}
# ref_value REF MODE RUN FIELD: a reference's value; REF "best" is the better
# of nginx and haproxy (lower for cpu/p50/p99, higher for rps).
ref_value() {
    local ref=$1 mode=$2 run=$3 field=$4
    if [[ $ref != best ]]; then
        val "$ref" "$mode" "$run" "$field"
        return
    fi
    local a b
    a=$(val nginx "$mode" "$run" "$field")
    b=$(val haproxy "$mode" "$run" "$field")
    awk -v a="$a" -v b="$b" -v f="$field" 'BEGIN {
        if (a == "") { print b; exit } if (b == "") { print a; exit }
        if (f == "rps") print (a + 0 > b + 0 ? a : b); else print (a + 0 < b + 0 ? a : b) }'
}
# ratios REF MODE FIELD: per-run gateway ÷ REF.
ratios() {
    local ref=$1 mode=$2 field=$3 run
    for ((run = 1; run <= RUNS; run++)); do
        ratio "$(val gateway "$mode" "$run" "$field")" "$(ref_value "$ref" "$mode" "$run" "$field")"
    done
}
has() { [[ " ${TARGETS[*]} " == *" $1 "* ]]; }
ratio_cell() { # ratio_cell REF MODE FIELD
    if [[ $1 == best ]]; then has nginx || has haproxy || {
        echo "—"
        return
    }; else has "$1" || {
        echo "—"
        return
    }; fi
    local values
    mapfile -t values < <(ratios "$@")
    cell ratio "${values[@]}"
}
median_ratio() { # median_ratio REF MODE FIELD: the median of the per-run ratios
    local values s
    mapfile -t values < <(ratios "$@")
    s=$(stats "${values[@]}")
    [[ -n $s ]] && fmt ratio "${s%% *}"
}

echo
echo "Per run (markdown):"
echo
hdr="| Run | Target | Full handshakes/s | CPU µs/full handshake | Full handshakes/s per core"
sep="| ---: | --- | ---: | ---: | ---:"
if [[ $RESUMED == 1 ]]; then
    hdr="$hdr | Resumed handshakes/s | CPU µs/resumed handshake"
    sep="$sep | ---: | ---:"
fi
hdr="$hdr | Keep-alive req/s | p50 (ms) | p99 (ms) | CPU µs/request | Terminator CPU busy % | wrk CPU busy % | Errors |"
sep="$sep | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
echo "$hdr"
echo "$sep"
for ((run = 1; run <= RUNS; run++)); do
    for key in "${TARGETS[@]}"; do
        busy=$(for mode in "${MODES[@]}"; do val "$key" "$mode" "$run" util; done | paste -sd / -)
        client=$(for mode in "${MODES[@]}"; do val "$key" "$mode" "$run" client; done | paste -sd / -)
        errors=$(for mode in "${MODES[@]}"; do val "$key" "$mode" "$run" err; done | paste -sd / -)
        line="| $run | ${LABEL[$key]} | $(fmt rps "$(val "$key" full "$run" rps)") | $(fmt cpu "$(val "$key" full "$run" cpu)") | $(cell percore "$(series "$key" full percore | sed -n "${run}p")")"
        if [[ $RESUMED == 1 ]]; then
            line="$line | $(fmt rps "$(val "$key" resumed "$run" rps)") | $(fmt cpu "$(val "$key" resumed "$run" cpu)")"
        fi
        line="$line | $(fmt rps "$(val "$key" ka "$run" rps)") | $(fmt p50 "$(val "$key" ka "$run" p50)") | $(fmt p99 "$(val "$key" ka "$run" p99)") | $(fmt cpu "$(val "$key" ka "$run" cpu)") | $busy | ${client:-—} | $errors |"
        echo "$line"
    done
done
printf '\n(Busy %% and errors: %s; wrk CPU = the whole CPU wrk is pinned to, from /proc/stat.)\n' "$(printf '%s' "${MODES[*]}" | sed 's/ /, /g; s/full/full handshakes/; s/resumed/resumed/; s/ka/keep-alive/')"

echo
if ((RUNS > 1)); then
    echo "Median (min–max) over $RUNS runs (markdown):"
else
    echo "Results (markdown):"
fi
echo
hdr="| Target | Full handshakes/s | CPU µs/full handshake | Full handshakes/s per core"
sep="| --- | ---: | ---: | ---:"
if [[ $RESUMED == 1 ]]; then
    hdr="$hdr | Resumed handshakes/s | CPU µs/resumed handshake"
    sep="$sep | ---: | ---:"
fi
echo "$hdr | Keep-alive req/s | p50 (ms) | p99 (ms) | CPU µs/request |"
echo "$sep | ---: | ---: | ---: | ---: |"
for key in "${TARGETS[@]}"; do
    col() { # col MODE FIELD
        local values
        mapfile -t values < <(series "$key" "$1" "$2")
        cell "$2" "${values[@]}"
    }
    line="| ${VERSION[$key]} | $(col full rps) | $(col full cpu) | $(col full percore)"
    [[ $RESUMED == 1 ]] && line="$line | $(col resumed rps) | $(col resumed cpu)"
    echo "$line | $(col ka rps) | $(col ka p50) | $(col ka p99) | $(col ka cpu) |"
done

echo
echo "Ratios gateway ÷ reference$( ((RUNS > 1)) && echo ": median of the per-run ratios (min–max)") (markdown):"
echo
echo "| gateway ÷ … | nginx | haproxy | better of nginx and haproxy |"
echo "| --- | ---: | ---: | ---: |"
ratio_row() { # ratio_row LABEL MODE FIELD
    echo "| $1 | $(ratio_cell nginx "$2" "$3") | $(ratio_cell haproxy "$2" "$3") | $(ratio_cell best "$2" "$3") |"
}
ratio_row "CPU µs per full handshake (lower is better)" full cpu
[[ $RESUMED == 1 ]] && ratio_row "CPU µs per resumed handshake (lower is better)" resumed cpu
ratio_row "CPU µs per keep-alive request (lower is better)" ka cpu
ratio_row "Full handshakes/s (higher is better; client-bound when the terminator is not busy 100%)" full rps
ratio_row "Keep-alive requests/s (higher is better)" ka rps
ratio_row "Keep-alive p99 (lower is better)" ka p99

echo
echo "Ratios"
for ref in nginx haproxy; do
    has "$ref" || {
        printf '  gateway vs %-8s not measured (skipped or not installable)\n' "$ref:"
        continue
    }
    printf '  gateway vs %-8s CPU µs/full handshake %s×%s, CPU µs/keep-alive request %s×, full handshakes/s %s×, keep-alive requests/s %s×, keep-alive p99 %s×\n' \
        "$ref:" "$(median_ratio "$ref" full cpu)" \
        "$([[ $RESUMED == 1 ]] && echo ", CPU µs/resumed handshake $(median_ratio "$ref" resumed cpu)×")" \
        "$(median_ratio "$ref" ka cpu)" "$(median_ratio "$ref" full rps)" "$(median_ratio "$ref" ka rps)" \
        "$(median_ratio "$ref" ka p99)"
done
if has nginx || has haproxy; then
    verdict() { # verdict MODE LABEL
        local r
        r=$(median_ratio best "$1" cpu)
        if awk -v r="$r" 'BEGIN { exit !(r <= 1.10) }'; then
            printf '  %s: gateway %s× the better of nginx and haproxy: within the 1.1× target\n' "$2" "$r"
        else
            printf '  %s: gateway %s× the better of nginx and haproxy: MISSES the 1.1× target\n' "$2" "$r"
        fi
    }
    echo
    echo "Target: gateway CPU within 1.1× of the better of nginx and haproxy (median of per-run ratios)"
    verdict full "CPU per full handshake"
    [[ $RESUMED == 1 ]] && verdict resumed "CPU per resumed handshake (for information)"
    verdict ka "CPU per keep-alive request"
fi
negotiated=$(for key in "${TARGETS[@]}"; do echo "${TLS_INFO[$key]}"; done | sort -u)
if (($(wc -l <<<"$negotiated") == 1)); then
    negotiated="$negotiated with every target"
else
    negotiated=$(for key in "${TARGETS[@]}"; do echo "${LABEL[$key]} ${TLS_INFO[$key]}"; done | paste -sd ';' - | sed 's/;/; /g')
fi
echo
printf '_wrk -t%s -d%s after a %s warm-up, %s run(s), loopback, %s; %s; %s; client %s. Full handshakes: wrk -c%s with Connection: close and an LD_PRELOAD shim that drops the session in SSL_clear (plain wrk resumes); keep-alive: wrk -c%s. Negotiated (openssl s_client, same defaults as wrk): %s. CPU = utime+stime of the terminator from /proc/PID/stat (nginx: master + worker) over the measured run ÷ requests completed; per core = 1e6 ÷ CPU µs._\n' \
    "$THREADS" "$DURATION" "$WARMUP" "$RUNS" "$pin_desc" "$host_desc" "$versions" "$openssl_version" \
    "$HS_CONNECTIONS" "$CONNECTIONS" "$negotiated"
((gateway_log_lines <= 5)) || warn "the gateway logged $gateway_log_lines lines during the benchmark ($TMP/gateway.log)"

FAILED=0
