#!/usr/bin/env bash
# Builds the gateway's Docker image on this machine and runs it, with host
# networking only (no image registry is reachable here, and containers must
# not get a network of their own):
#
#   1. dockerd is started with --bridge=none --iptables=false if none runs;
#   2. a Debian bookworm base image is made with debootstrap (minbase, plus
#      ca-certificates) and imported, standing in for debian:bookworm-slim;
#   3. the Dockerfile is built with that base as its runtime image and, as
#      its build stage, a stand-in for rust:1.95-bookworm made from the same
#      base, Debian's gcc and this machine's Rust toolchain (no Rust image
#      can be pulled): the Dockerfile's own `cargo build --locked --profile
#      dist` runs inside it, crates fetched over the host network. With
#      PREBUILT=path the build stage copies that binary instead (quick);
#   4. the image runs `gateway demo` on loopback ports with --network host;
#      the script checks answers from all three demo backends through it,
#      the admin API, the user the process runs as, and prints the image size.
#
# Usage: sudo scripts/docker-check.sh   (root: dockerd and debootstrap)
#   PREBUILT=/path/to/gateway  put this binary in the image instead of
#                              running the Dockerfile's cargo build
#   WORK=/var/tmp/gateway-docker  where the rootfs and logs go
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/var/tmp/gateway-docker}
PORT=${PORT:-18180}
ADMIN_PORT=${ADMIN_PORT:-19190}
BACKEND_PORT=${BACKEND_PORT:-19201}
mkdir -p "$WORK"
log() { printf '==> %s\n' "$*" >&2; }

if ! docker info >/dev/null 2>&1; then
  log "starting dockerd (no bridge, no iptables)"
  dockerd --bridge=none --iptables=false --ip-masq=false >"$WORK/dockerd.log" 2>&1 &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { cat "$WORK/dockerd.log" >&2; exit 1; }
fi

if ! docker image inspect gateway-base:bookworm >/dev/null 2>&1; then
  log "making the base image with debootstrap"
  rm -rf "$WORK/rootfs"
  debootstrap --variant=minbase --include=ca-certificates bookworm "$WORK/rootfs" \
    http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1
  rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
  tar -C "$WORK/rootfs" -c . | docker import - gateway-base:bookworm >/dev/null
fi

if [ -n "${PREBUILT:-}" ]; then
  rm -rf "$WORK/prebuilt" && mkdir -p "$WORK/prebuilt"
  cp "$PREBUILT" "$WORK/prebuilt/gateway"
  printf 'FROM gateway-base:bookworm\nCOPY gateway /prebuilt/gateway\n' >"$WORK/prebuilt/Dockerfile"
  docker build -q -t gateway-builder:local "$WORK/prebuilt" >/dev/null
else
  log "making the Rust build image (Debian's gcc + this machine's $(rustc --version))"
  toolchain=$(rustc --print sysroot)
  rm -rf "$WORK/rust" && mkdir -p "$WORK/rust/rust/lib/rustlib"
  cp -a "$toolchain/bin" "$toolchain/libexec" "$WORK/rust/rust/"
  find "$toolchain/lib" -maxdepth 1 -type f -exec cp -a {} "$WORK/rust/rust/lib/" \;
  cp -a "$toolchain/lib/rustlib/x86_64-unknown-linux-gnu" "$WORK/rust/rust/lib/rustlib/"
  # This machine's own CA roots (an egress proxy's, say), so cargo in the
  # build stage reaches crates.io as cargo on the host does.
  mkdir -p "$WORK/rust/ca"
  cp /usr/local/share/ca-certificates/*.crt "$WORK/rust/ca/" 2>/dev/null || true
  cat >"$WORK/rust/Dockerfile" <<'EOF'
FROM gateway-base:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
COPY ca /usr/local/share/ca-certificates
RUN update-ca-certificates >/dev/null
COPY rust /usr/local/rust
ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    CARGO_HOME=/usr/local/cargo
EOF
  DOCKER_BUILDKIT=0 docker build -q --network host -t gateway-builder:local "$WORK/rust" >/dev/null
fi

log "docker build (the repository's Dockerfile)"
DOCKER_BUILDKIT=0 docker build --network host -t gateway:local \
  --build-arg RUST_IMAGE=gateway-builder:local \
  --build-arg RUNTIME_IMAGE=gateway-base:bookworm . >"$WORK/build.log" 2>&1 \
  || { tail -50 "$WORK/build.log" >&2; exit 1; }
grep -E '^ *Finished' "$WORK/build.log" >&2 || true

log "running it with --network host"
docker rm -f gateway-check >/dev/null 2>&1 || true
token=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
docker run -d --name gateway-check --network host \
  -e GATEWAY_ADMIN_TOKEN="$token" -e GATEWAY_LISTEN="127.0.0.1:$PORT" \
  -e GATEWAY_ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT" \
  gateway:local demo -c /etc/gateway/gateway.yaml --base-port "$BACKEND_PORT" >/dev/null
trap 'docker rm -f gateway-check >/dev/null 2>&1 || true' EXIT
for _ in $(seq 1 50); do curl -fs "http://127.0.0.1:$PORT/" >/dev/null 2>&1 && break; sleep 0.2; done
seen=$(for _ in 1 2 3 4 5 6; do curl -fs "http://127.0.0.1:$PORT/" | sed -n 's/.*"backend": *"\([^"]*\)".*/\1/p'; done | sort -u | tr '\n' ' ')
echo "backends answering through the container: $seen"
[ "$(wc -w <<<"$seen")" -eq 3 ] || { docker logs gateway-check >&2; exit 1; }
echo "admin /backends: $(curl -fs -H "Authorization: Bearer $token" "http://127.0.0.1:$ADMIN_PORT/backends" | head -c 200)..."
echo "process user: $(docker exec gateway-check id)"
docker image ls gateway:local --format 'image gateway:local: {{.Size}}'
docker image ls gateway-base:bookworm --format 'base (debootstrap minbase + ca-certificates): {{.Size}}'
echo "ok"
