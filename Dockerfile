# dotproxy container image (Debian 12).
#
#   docker build -t dotproxy .        (or: podman build -t dotproxy .)
#   docker run --rm --network host dotproxy --listen 127.0.0.1:5353 \
#       --upstream 1.1.1.1#cloudflare-dns.com
#
# The default CMD uses /etc/dotproxy/dotproxy.toml (deploy/container/dotproxy.toml:
# DNS on 0.0.0.0:53, metrics /metrics, /health and /ready on 0.0.0.0:9153,
# Cloudflare upstreams); mount another file there, or override with flags or
# DOTPROXY_* variables. dotproxy runs as the non-root user `dotproxy`, uid and
# gid 953 (numeric in USER, so Kubernetes can check runAsNonRoot); the binary
# carries cap_net_bind_service so it can still bind port 53, also under
# no-new-privileges when the runtime grants NET_BIND_SERVICE.
#
# io_uring: the default seccomp profiles of podman, Docker >= 25 and containerd
# 2.0 deny io_uring_setup. dotproxy's default `--io-backend auto` then logs
# `io backend: epoll (auto: io_uring refused: ...)` and serves on epoll. To use
# io_uring, run with deploy/seccomp/dotproxy.json (the default profile plus
# io_uring_setup, io_uring_enter and io_uring_register):
#   podman run --security-opt seccomp=deploy/seccomp/dotproxy.json ...

FROM debian:bookworm-slim AS build
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      g++ meson ninja-build pkg-config \
      liburing-dev libwolfssl-dev libabsl-dev libsystemd-dev libtomlplusplus-dev \
      prometheus-cpp-dev libfstrm-dev libprotobuf-c-dev protobuf-c-compiler libnghttp2-dev \
      libcap2-bin ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN meson setup /build -Dtests=false -Dbenchmarks=false --buildtype=release \
 && meson compile -C /build \
 && install -D -m 0755 /build/dotproxy /out/usr/local/bin/dotproxy \
 && setcap cap_net_bind_service=+ep /out/usr/local/bin/dotproxy \
 && install -D -m 0644 deploy/container/dotproxy.toml /out/etc/dotproxy/dotproxy.toml

FROM debian:bookworm-slim
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      liburing2 libwolfssl35 libabsl20220623 libsystemd0 libtomlplusplus3 \
      libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libcivetweb1 \
      libfstrm0 libprotobuf-c1 libnghttp2-14 \
      ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 953 dotproxy \
 && useradd --system --uid 953 --gid 953 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin dotproxy
COPY --from=build /out/etc/dotproxy/dotproxy.toml /etc/dotproxy/dotproxy.toml
COPY --from=build /out/usr/local/bin/dotproxy /usr/local/bin/dotproxy
USER 953:953
EXPOSE 53/udp 53/tcp 9153/tcp
ENTRYPOINT ["/usr/local/bin/dotproxy"]
CMD ["--config", "/etc/dotproxy/dotproxy.toml"]
