#!/usr/bin/env bash
# Installs everything dotproxy needs to build, test and benchmark on Debian 12.
# Run as root (or with sudo available). Idempotent.
set -euo pipefail

PACKAGES=(
  # build
  g++ meson ninja-build pkg-config
  liburing-dev libwolfssl-dev libabsl-dev libsystemd-dev libtomlplusplus-dev
  libgtest-dev libbenchmark-dev
  # the metrics endpoint: prometheus-cpp (core + pull, with civetweb)
  prometheus-cpp-dev libcivetweb-dev
  ca-certificates
  # tests: a real DoT upstream, real clients, a test CA
  unbound bind9-dnsutils dnsperf openssl python3 python3-dnspython
  # tests: tests/e2e/deny_io_uring (io_uring refused by seccomp, for the
  # epoll fallback cases)
  libseccomp-dev
  # tests: the fuzz targets (tests/fuzz: clang's libFuzzer and sanitizer
  # runtimes; llvm-14 for llvm-symbolizer, readable sanitizer stacks)
  clang-14 libclang-rt-14-dev llvm-14
  # tests: promtool and a real Prometheus server scraping the metrics
  # endpoint (dotproxy_e2e_metrics.py)
  prometheus
  # tests: deploy/ (tests/deploy): yamllint and python3-yaml for the
  # Kubernetes manifests (kubectl itself is not a Debian package here)
  yamllint python3-yaml
  # tests: systemd-socket-activate and systemd-analyze (socket activation
  # cases, the offline check of systemd/*.service and *.socket)
  systemd
  # dnstap: Frame Streams and protobuf-c (build), the readers fstrm_capture
  # and dnstap-read (tests)
  libfstrm-dev libprotobuf-c-dev protobuf-c-compiler fstrm-bin
  # encrypted transports: HTTP/2 for DNS over HTTPS (build); kdig (+tls,
  # +https) as a real DoT/DoH client, dnsdist as a DoT/DoH peer (tests, bench)
  libnghttp2-dev knot-dnsutils dnsdist
  # tests: curl --http2 checks that a DoH server on loopback is ready
  # (dotproxy_e2e_doh_upstream.py)
  curl
  # tests, bench: h2load (nghttp2-client) loads the DoH listeners (e2e
  # doh_no_allocation_per_query, bench/load/doh_listener.py): dnsperf 2.10's
  # DoH mode loses answers past one query in flight, from any server
  nghttp2-client
  # tests: ss -m reads a UDP socket's receive buffer (protect_overload_cpu)
  iproute2
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends "${PACKAGES[@]}"
