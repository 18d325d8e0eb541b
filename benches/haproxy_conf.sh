# shellcheck shell=bash
# Sourced by benches/proxy.sh, benches/proxy_instructions.sh and
# benches/tls.sh: the HAProxy configuration they compare the gateway with,
# written in one place (beside benches/nginx_conf.sh) so that they measure
# the same reference.
#
# haproxy_conf PORT BASE_PORT COUNT [NBTHREAD] [BIND_EXTRA] [PROTO] [GLOBAL_EXTRA]
#   prints a config for a private HAProxy (run it in the foreground with
#   `haproxy -f FILE -db`: no daemon, no master process, no stats socket)
#   listening on 127.0.0.1:PORT, proxying round robin with keep-alive and
#   backend connection reuse to COUNT echo backends on 127.0.0.1:BASE_PORT..,
#   without logging or health checks, and sending the same request headers
#   as the gateway and nginx (X-Forwarded-For, -Proto, -Host).
#   NBTHREAD [1] is the number of threads (the counterpart of the gateway's
#   proxy.workers and nginx's worker_processes); BIND_EXTRA is appended to
#   the bind line (e.g. `ssl crt FILE alpn http/1.1`); PROTO [http] is the
#   X-Forwarded-Proto value; GLOBAL_EXTRA is extra lines for the global section.
haproxy_conf() {
    local port=$1 base_port=$2 count=$3 nbthread=${4:-1} bind_extra=${5:-} proto=${6:-http} global_extra=${7:-} i
    cat <<CONF
# Private haproxy for the benchmark: loopback, foreground (-db), no logging.
global
    nbthread $nbthread
    maxconn 4096
CONF
    [[ -n $global_extra ]] && printf '%s\n' "$global_extra"
    cat <<CONF
defaults
    mode http
    option http-keep-alive
    timeout connect 10s
    timeout client 10s
    timeout server 10s
    http-reuse always
frontend fe
    bind 127.0.0.1:$port${bind_extra:+ $bind_extra}
    # Same request headers as the gateway and nginx send, so the echo
    # backends return bodies of the same size.
    option forwardfor
    http-request set-header X-Forwarded-Proto $proto
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    default_backend echo
backend echo
    balance roundrobin
CONF
    for ((i = 0; i < count; i++)); do
        echo "    server b$i 127.0.0.1:$((base_port + i))"
    done
}
