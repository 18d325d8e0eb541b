# shellcheck shell=bash
# Sourced by benches/proxy.sh, benches/proxy_instructions.sh, benches/tls.sh
# and benches/idle_memory.sh: the nginx configuration they compare the
# gateway with, written in one place so that they measure the same reference
# (benches/haproxy_conf.sh is the HAProxy counterpart).
#
# nginx_conf DIR PORT BASE_PORT COUNT [TOP] [WORKERS]
#   prints a config for a private nginx keeping everything in DIR, listening
#   on 127.0.0.1:PORT, proxying round robin with keep-alive to COUNT echo
#   backends on 127.0.0.1:BASE_PORT.. and sending the same request headers
#   as the gateway. TOP is extra main-context lines (e.g. `master_process off;`);
#   WORKERS [1] is worker_processes.
nginx_conf() {
    local dir=$1 port=$2 base_port=$3 count=$4 top=${5:-} workers=${6:-1} i
    cat <<CONF
# Private nginx for the benchmark: loopback, everything in $dir.
worker_processes $workers;
$top
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events {
    worker_connections 4096;
}
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    # The gateway does not cap requests per client connection; neither do we
    # (nginx's default would close each wrk connection every 1000 requests).
    keepalive_requests 1000000;
    upstream backends {
CONF
    for ((i = 0; i < count; i++)); do
        echo "        server 127.0.0.1:$((base_port + i));"
    done
    cat <<CONF
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Same request headers as the gateway sends, so the echo
            # backends return bodies of the same size.
            proxy_set_header Host \$http_host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$http_host;
        }
    }
}
CONF
}
