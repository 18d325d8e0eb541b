# syntax=docker/dockerfile:1
# The gateway in a container: built in a Rust image, run on Debian slim as
# an unprivileged user with nothing else in the image but CA roots.
#
#   docker build -t gateway .
#   docker run --rm -p 8080:8080 -p 9091:9091 \
#     -e GATEWAY_ADMIN_TOKEN=$(head -c 24 /dev/urandom | base64) \
#     -v $PWD/gateway.yaml:/etc/gateway/gateway.yaml:ro gateway
#
# The admin API listens on 0.0.0.0:9091 in the container (GATEWAY_ADMIN_LISTEN
# below), so a token of 16 or more characters is required to start.
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# A builder image that already holds /prebuilt/gateway (scripts/docker-check.sh,
# on machines without an image registry) skips the compile.
RUN if [ -x /prebuilt/gateway ]; then cp /prebuilt/gateway /gateway; \
    else cargo build --locked --profile dist -p gateway && cp target/dist/gateway /gateway; fi

FROM ${RUNTIME_IMAGE} AS runtime
RUN if [ ! -e /etc/ssl/certs/ca-certificates.crt ]; then \
      apt-get update && apt-get install -y --no-install-recommends ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && useradd --system --uid 10001 --home-dir /var/lib/gateway --create-home --shell /usr/sbin/nologin gateway
COPY --from=build /gateway /usr/local/bin/gateway
COPY gateway.yaml /etc/gateway/gateway.yaml
ENV GATEWAY_LISTEN=0.0.0.0:8080 \
    GATEWAY_ADMIN_LISTEN=0.0.0.0:9091 \
    XDG_CACHE_HOME=/var/lib/gateway/cache \
    XDG_DATA_HOME=/var/lib/gateway
USER gateway
WORKDIR /var/lib/gateway
EXPOSE 8080 8443 9091
ENTRYPOINT ["/usr/local/bin/gateway"]
CMD ["run", "-c", "/etc/gateway/gateway.yaml", "--log-format", "json"]
