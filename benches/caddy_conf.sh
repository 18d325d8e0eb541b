# shellcheck shell=bash
# Sourced by benches/proxy.sh: the Caddy configuration it compares the
# gateway with, written in its own file beside benches/nginx_conf.sh and
# benches/haproxy_conf.sh so that it can be read (and reused) as one piece.
#
# caddy_conf PORT BASE_PORT COUNT
#   prints a Caddyfile for a private Caddy (run it in the foreground with
#   `caddy run --config FILE --adapter caddyfile`) listening on
#   127.0.0.1:PORT with HTTP/1.1 only, proxying round robin with keep-alive
#   to COUNT echo backends on 127.0.0.1:BASE_PORT.., without an admin
#   endpoint, automatic HTTPS, access logging or health checks, and sending
#   the same request headers as the gateway, nginx and HAProxy
#   (X-Forwarded-For, -Proto, -Host, the client's Host).
#   Caddy has no setting for its number of threads: the counterpart of the
#   gateway's proxy.workers, nginx's worker_processes and HAProxy's nbthread
#   is the GOMAXPROCS environment variable, which the caller sets. Caddy
#   also saves the config it runs (autosave.json) under $XDG_CONFIG_HOME even
#   with the admin endpoint off, so the caller points XDG_CONFIG_HOME and
#   XDG_DATA_HOME into its temp dir.
caddy_conf() {
    local port=$1 base_port=$2 count=$3 upstreams="" i
    for ((i = 0; i < count; i++)); do upstreams="$upstreams 127.0.0.1:$((base_port + i))"; done
    # Tabs: the indentation `caddy fmt` wants (otherwise Caddy warns that
    # the Caddyfile is not formatted on every start).
    cat <<CONF
# Private Caddy for the benchmark: loopback, foreground, no access logging.
{
	# No admin API (it would listen on localhost:2019): stopped with SIGTERM.
	admin off
	# Plain HTTP only: no certificates, no redirect listener on port 80.
	auto_https off
	# nginx and HAProxy stop at once on SIGTERM; do not wait for idle
	# keep-alive connections for long either.
	grace_period 1s
	# Runtime log to stderr, warnings only (nginx: error_log warn).
	log {
		level WARN
	}
	servers {
		# HTTP/1.1 only on the listening side, like the other proxies.
		protocols h1
	}
}

# No host in the address: every Host matches, like nginx's default server
# and HAProxy's frontend; bind keeps the listener on loopback.
http://:$port {
	bind 127.0.0.1
	# No passive or active health checks and no retries by default, like
	# nginx (open source) and HAProxy without 'check'. X-Forwarded-For,
	# -Proto and -Host are set by default and the client's Host is kept,
	# which are the headers the gateway, nginx and HAProxy send.
	reverse_proxy$upstreams {
		lb_policy round_robin
		transport http {
			versions 1.1
			# Go's transport would otherwise add Accept-Encoding: gzip,
			# a header the other proxies do not send (the echo backends
			# echo it, so their answers would be larger).
			compression off
			# Keep-alive to the backends with an idle pool that holds
			# every wrk connection's upstream connection (nginx:
			# keepalive 64; Caddy's default is 32 per backend).
			keepalive 2m
			keepalive_idle_conns 64
			keepalive_idle_conns_per_host 64
		}
	}
}
CONF
}

# find_caddy: the caddy binary (Debian's package installs /usr/bin/caddy).
find_caddy() {
    command -v caddy 2>/dev/null && return 0
    [[ -x /usr/bin/caddy ]] && echo /usr/bin/caddy && return 0
    return 1
}
