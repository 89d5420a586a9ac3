#!/usr/bin/env bash
# Load benchmark for dotproxy: dnsperf -> target (plain DNS, core 1) -> DoT -> Unbound (core 0).
# Loopback only. Every loop is bounded; the script stops by itself and cleans up on exit.
# See bench/load/README.md.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PY=/usr/bin/python3
HELPER="$HERE/bench_helper.py"

usage() {
    cat <<EOF
usage: bench/load/run.sh [--help]

One run measures every target in TARGETS through every scenario in SCENARIOS,
all against the same local DoT upstream, and prints one Markdown table, a burst
table and a ratios section. dnsperf (and the upstream) on LOAD_CPU, the target on
TARGET_CPU.

Scenarios (SCENARIOS, in this order):
  hit-udp    cache hits: HIT_NAMES names repeated (primed first), UDP, rates HIT_RATES
  hit-tcp    the same with TCP clients (dnsperf -m tcp)
  miss-udp   cache misses: unique names, UDP, rates MISS_RATES
  miss-tcp   misses with TCP clients, rates MISS_TCP_RATES
  hit-dot    cache hits from DNS-over-TLS clients (dnsperf -m dot) to the target's DoT
             listener (dotproxy --listen-tls, dnsdist addTLSLocal), rates HIT_RATES;
             only dotproxy* and dnsdist targets (not in the default SCENARIOS)
  miss-dot   misses from DoT clients, rates MISS_TCP_RATES
  burst      BURST_QUERIES unique queries at once from BURST_SOCKETS UDP sockets;
             answers counted within BURST_WINDOW seconds

Environment (defaults in brackets):
  DOTPROXY       path to the dotproxy binary [build/dotproxy, relative to the repo]
  DOTPROXY_ARGS  extra arguments for dotproxy [--cache-size 100000]
  DOTPROXY_DEEP_ARGS  added for target dotproxy_deep [--max-inflight-per-connection 1000]
  DOTPROXY_BASE  a second dotproxy binary for target dotproxy_base (same DOTPROXY_ARGS),
                 to compare a change side by side with the build it replaces
  TARGETS        targets, space separated
                 [reflector dotproxy dotproxy_deep dnsdist unbound_fwd kresd]
                 also: dotproxy_base (see DOTPROXY_BASE), dotproxy_epoll = the dotproxy
                 binary with DOTPROXY_ARGS plus --io-backend epoll (the epoll backend
                 side by side with io_uring: TARGETS="dotproxy dotproxy_epoll")
                 dotproxy_plain_tcp / dotproxy_plain_udp = the dotproxy binary to the
                 upstream's plain port (tcp:// / udp://, --allow-plaintext): the cost of
                 TLS per query, TARGETS="dotproxy dotproxy_plain_tcp dotproxy_plain_udp"
                 dotproxy_ratelimit = DOTPROXY_ARGS plus --rate-limit 10000000 (the
                 limiter on, never reached: its cost per query, next to dotproxy)
                 dotproxy_metrics = DOTPROXY_ARGS plus --metrics on a loopback port, never
                 scraped; dotproxy_scraped = the same, scraped (GET /metrics) every
                 second while it runs: TARGETS="dotproxy_metrics dotproxy_scraped" gives
                 the cost of a scrape per query (the endpoint's threads share the
                 target's core, so their CPU is in the target's CPU-µs per query)
                 dotproxy_dnstap = DOTPROXY_ARGS plus --dnstap file:DNSTAP_FILE [/dev/null]:
                 all four message types encoded and written (the writer thread
                 shares the target's core): its cost per query, next to dotproxy
                 reflector = bench/load/reflector.c (UDP only: hit-udp and burst), the
                 ceiling for the cache-hit path
  SCENARIOS      [hit-udp hit-tcp miss-udp miss-tcp burst]
  HIT_RATES      [max]        MISS_RATES [5000 20000 max]      MISS_TCP_RATES [max]
  HIT_NAMES      names in the cache-hit set [100]
  BURST_QUERIES [2000]  BURST_SOCKETS [50]  BURST_WINDOW seconds [2]
  DURATION       seconds per run [10]
  CLIENTS        dnsperf -c: UDP sockets / TCP connections [10]
  OUTSTANDING    dnsperf -q: max queries in flight [500]
  TIMEOUT        dnsperf -t: seconds before a query counts as lost [2]
  NAMES          unique names per miss run's data file [2000000]
  PERCENTILES    1 = dnsperf -v and compute p50/p90/p99/p99.9 [1]
  LOAD_CPU       core for dnsperf and the upstream [0]
  TARGET_CPU     core for the target [1]
  READY_TIMEOUT  seconds to wait for a process to answer [10]
  RESULTS_DIR    where raw outputs go [bench/load/results/<timestamp>]
  UPSTREAM       DoT upstream: dnsdist | unbound [dnsdist]. Unbound 1.17 handles at most
                 ~19-39k qps on ONE stream connection (hard-coded cap of 32 concurrent
                 requests per stream, ~50 ms stalls): above that the upstream, not the
                 target, is the bottleneck. dnsdist does ~70k on one connection.
  CALIBRATE      1 = first measure the upstream alone: dnsperf -m dot -c 1 at max straight
                 to its DoT port (row "upstream:NAME", proto dot-1conn) [1]
  PERF           1 = after a target's runs, one more run at max per PERF_SCENARIOS while
                 perf profiles the target; flame graphs in RESULTS_DIR/flame/ (rows
                 "max+perf") [0] (bench/flamegraph/profile.sh; PERF_CALLGRAPH, PERF_FREQ)
  PERF_SCENARIOS [hit-udp miss-udp]
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

DOTPROXY="${DOTPROXY:-build/dotproxy}"
case "$DOTPROXY" in /*) ;; *) DOTPROXY="$REPO/$DOTPROXY" ;; esac
DOTPROXY_BASE="${DOTPROXY_BASE:-}"
case "$DOTPROXY_BASE" in /*|"") ;; *) DOTPROXY_BASE="$REPO/$DOTPROXY_BASE" ;; esac
DOTPROXY_ARGS="${DOTPROXY_ARGS---cache-size 100000}"
DOTPROXY_DEEP_ARGS="${DOTPROXY_DEEP_ARGS---max-inflight-per-connection 1000}"
TARGETS="${TARGETS:-reflector dotproxy dotproxy_deep dnsdist unbound_fwd kresd}"
SCENARIOS="${SCENARIOS-hit-udp hit-tcp miss-udp miss-tcp burst}"
HIT_RATES="${HIT_RATES:-max}"
MISS_RATES="${MISS_RATES:-${RATES:-5000 20000 max}}"
MISS_TCP_RATES="${MISS_TCP_RATES:-max}"
HIT_NAMES="${HIT_NAMES:-100}"
BURST_QUERIES="${BURST_QUERIES:-2000}"
BURST_SOCKETS="${BURST_SOCKETS:-50}"
BURST_WINDOW="${BURST_WINDOW:-2}"
DURATION="${DURATION:-10}"
CLIENTS="${CLIENTS:-10}"
OUTSTANDING="${OUTSTANDING:-500}"
TIMEOUT="${TIMEOUT:-2}"
NAMES="${NAMES:-2000000}"
PERCENTILES="${PERCENTILES:-1}"
LOAD_CPU="${LOAD_CPU:-0}"
TARGET_CPU="${TARGET_CPU:-1}"
READY_TIMEOUT="${READY_TIMEOUT:-10}"
PERF="${PERF:-0}"
PERF_SCENARIOS="${PERF_SCENARIOS:-hit-udp miss-udp}"
UPSTREAM="${UPSTREAM:-dnsdist}"
CALIBRATE="${CALIBRATE:-1}"
case "$UPSTREAM" in unbound|dnsdist) ;; *) echo "UPSTREAM must be unbound or dnsdist" >&2; exit 2 ;; esac
for sc in $SCENARIOS $PERF_SCENARIOS; do
    case "$sc" in hit-udp|hit-tcp|miss-udp|miss-tcp|hit-dot|miss-dot|burst) ;; *) echo "unknown scenario '$sc'" >&2; exit 2 ;; esac
done
TS="$(date +%Y%m%d-%H%M%S)"
RESULTS_DIR="${RESULTS_DIR:-$HERE/results/$TS}"

for v in DURATION CLIENTS OUTSTANDING TIMEOUT NAMES LOAD_CPU TARGET_CPU READY_TIMEOUT HIT_NAMES \
         BURST_QUERIES BURST_SOCKETS BURST_WINDOW; do
    case "${!v}" in ''|*[!0-9]*) echo "$v must be a non-negative integer (got '${!v}')" >&2; exit 2 ;; esac
done
[ "$DURATION" -ge 1 ] && [ "$DURATION" -le 600 ] || { echo "DURATION must be 1..600" >&2; exit 2; }
[ "$HIT_NAMES" -ge 1 ] && [ "$BURST_WINDOW" -ge 1 ] && [ "$BURST_WINDOW" -le 30 ] \
    && [ "$BURST_QUERIES" -le 100000 ] && [ "$BURST_SOCKETS" -ge 1 ] && [ "$BURST_SOCKETS" -le 1000 ] \
    || { echo "HIT_NAMES >= 1, BURST_WINDOW 1..30, BURST_QUERIES <= 100000, BURST_SOCKETS 1..1000" >&2; exit 2; }
for r in $HIT_RATES $MISS_RATES $MISS_TCP_RATES; do
    case "$r" in max) ;; ''|*[!0-9]*) echo "bad rate '$r' (number or 'max')" >&2; exit 2 ;; esac
done

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- tools
check_tools() {
    local missing=() t pkg
    for t in unbound:unbound unbound-checkconf:unbound dnsperf:dnsperf openssl:openssl \
             taskset:util-linux dig:bind9-dnsutils getconf:libc-bin awk:mawk \
             gzip:gzip timeout:coreutils; do
        command -v "${t%%:*}" >/dev/null 2>&1 || missing+=("${t#*:}")
    done
    [ -x "$PY" ] || missing+=(python3)
    local need_dnsdist=0
    [ "$UPSTREAM" = dnsdist ] && need_dnsdist=1
    case " $TARGETS " in *" dnsdist "*) need_dnsdist=1 ;; esac
    [ "$need_dnsdist" = 1 ] && ! command -v dnsdist >/dev/null 2>&1 && missing+=(dnsdist)
    case " $TARGETS " in *" kresd "*) command -v kresd >/dev/null 2>&1 || missing+=(knot-resolver) ;; esac
    case " $TARGETS " in *" reflector "*) command -v cc >/dev/null 2>&1 || missing+=(gcc) ;; esac
    [ "$PERF" = 1 ] && ! command -v perf >/dev/null 2>&1 && missing+=(linux-perf)
    if [ ${#missing[@]} -gt 0 ]; then
        die "missing tools; install with: apt-get install -y $(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')"
    fi
    local ncpu; ncpu="$(nproc)"
    if [ "$LOAD_CPU" -ge "$ncpu" ] || [ "$TARGET_CPU" -ge "$ncpu" ]; then
        die "need cores $LOAD_CPU and $TARGET_CPU, this machine has $ncpu (set LOAD_CPU/TARGET_CPU)"
    fi
    [ "$LOAD_CPU" != "$TARGET_CPU" ] || log "WARNING: LOAD_CPU == TARGET_CPU; target shares its core with the load generator"
}

# ---------------------------------------------------------------- cleanup
STARTED_PIDS=()
WORK=""
cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM
    for pid in "${STARTED_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED_PIDS[@]}"; do
        for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    [ -n "$WORK" ] && [ -d "$WORK" ] && rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Stop one process we started (by PID), bounded.
stop_pid() {
    local pid="$1" i
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local keep=() p
    for p in "${STARTED_PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
    STARTED_PIDS=("${keep[@]+"${keep[@]}"}")
}

# ---------------------------------------------------------------- measurement helpers
CLK_TCK="$(getconf CLK_TCK)"

# utime+stime of a process (all its threads), in clock ticks.
proc_ticks() {
    local s
    s="$(cat "/proc/$1/stat" 2>/dev/null)" || { echo 0; return; }
    s="${s##*) }"
    # shellcheck disable=SC2086
    set -- $s
    echo $(( ${12} + ${13} ))
}

# "busy total" jiffies of one core from /proc/stat.
core_jiffies() {
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; idle = $5 + $6; print t - idle, t }' /proc/stat
}

# dig through a plain-DNS port until it answers bench.test with 192.0.2.1, bounded.
# args: port pid-to-watch [+tcp]
# The reflector answers with the query itself (no records): with a 4th argument
# "reflect", a NOERROR reply echoing the question is enough.
wait_dns_ready() {
    local port="$1" pid="$2" extra="${3:-}" mode="${4:-}" deadline ans
    deadline=$(( $(date +%s) + READY_TIMEOUT ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        kill -0 "$pid" 2>/dev/null || return 1
        if [ "$mode" = reflect ]; then
            dig +time=1 +tries=1 -p "$port" @127.0.0.1 ready.bench.test A 2>/dev/null \
                | grep -q 'status: NOERROR' && return 0
            sleep 0.2
            continue
        fi
        # shellcheck disable=SC2086
        ans="$(dig +time=1 +tries=1 +short $extra -p "$port" @127.0.0.1 ready.bench.test A 2>/dev/null || true)"
        [ "$ans" = "192.0.2.1" ] && return 0
        sleep 0.2
    done
    return 1
}

# Print each thread's allowed CPU list; warn when a thread escaped the core we pinned it to.
check_affinity() {
    local pid="$1" want="$2" name="$3" t allowed bad=0
    for t in /proc/"$pid"/task/*; do
        allowed="$(awk '/^Cpus_allowed_list/ {print $2}' "$t/status" 2>/dev/null || true)"
        if [ -n "$allowed" ] && [ "$allowed" != "$want" ]; then
            log "WARNING: $name thread ${t##*/} ($(cat "$t/comm" 2>/dev/null)) may run on CPUs $allowed, not $want"
            bad=1
        fi
    done
    return $bad
}

# ---------------------------------------------------------------- upstream: DoT server on LOAD_CPU
make_certs() {
    local d="$1"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$d/ca.key" -out "$d/ca.pem" -days 2 -subj "/CN=dotproxy bench CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        >/dev/null 2>&1
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$d/server.key" -out "$d/server.csr" -subj "/CN=upstream.test" >/dev/null 2>&1
    printf '%s\n' 'subjectAltName=DNS:upstream.test,IP:127.0.0.1' \
        'basicConstraints=critical,CA:FALSE' 'keyUsage=critical,digitalSignature' \
        'extendedKeyUsage=serverAuth' > "$d/server.ext"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
        -out "$d/server.pem" -days 2 -extfile "$d/server.ext" >/dev/null 2>&1
    openssl verify -CAfile "$d/ca.pem" "$d/server.pem" >/dev/null || die "generated certificate does not verify"
}

UPSTREAM_PID="" UPSTREAM_PLAIN_PORT="" UPSTREAM_DOT_PORT="" CA=""
# The targets' own DoT listener (hit-dot, miss-dot): the upstream's certificate
# (SAN upstream.test; dnsperf does not verify) on TARGET_TLS_PORT.
TARGET_TLS_PORT="" TARGET_CERT="" TARGET_KEY=""
# Both upstreams: plain + DoT port on 127.0.0.1, cannot recurse (everything outside
# bench.test is NXDOMAIN), every name under bench.test answers A 192.0.2.1.
start_upstream() {
    local d="$WORK/upstream"
    mkdir -p "$d"
    make_certs "$d"
    CA="$d/ca.pem"
    TARGET_CERT="$d/server.pem" TARGET_KEY="$d/server.key"
    local ports; ports="$("$PY" "$HELPER" freeports 2)"
    UPSTREAM_PLAIN_PORT="$(sed -n 1p <<<"$ports")"
    UPSTREAM_DOT_PORT="$(sed -n 2p <<<"$ports")"
    "start_upstream_$UPSTREAM" "$d"
    wait_dns_ready "$UPSTREAM_PLAIN_PORT" "$UPSTREAM_PID" \
        || { cat "$RESULTS_DIR/upstream-$UPSTREAM.log" >&2; die "upstream $UPSTREAM did not come up"; }
    # Check the DoT port verifies with our CA and name.
    local ans
    ans="$(dig +tls +tls-ca="$CA" +tls-hostname=upstream.test +time=2 +tries=1 +short \
           -p "$UPSTREAM_DOT_PORT" @127.0.0.1 tlscheck.bench.test A 2>&1 || true)"
    [ "$ans" = "192.0.2.1" ] || die "upstream DoT check failed: $ans"
    ans="$(dig +time=2 +tries=1 -p "$UPSTREAM_PLAIN_PORT" @127.0.0.1 example.com A 2>&1 | grep -o 'status: [A-Z]*' || true)"
    [ "$ans" = "status: NXDOMAIN" ] || die "upstream answers outside bench.test ($ans); refusing to run"
    log "upstream $UPSTREAM pid $UPSTREAM_PID on core $LOAD_CPU: plain 127.0.0.1:$UPSTREAM_PLAIN_PORT, DoT 127.0.0.1:$UPSTREAM_DOT_PORT (name upstream.test)"
}

start_upstream_dnsdist() {
    local d="$1"
    cat > "$d/dnsdist.conf" <<EOF
-- No security polling: it would query secpoll.powerdns.com via /etc/resolv.conf (off-host).
setSecurityPollSuffix("")
-- maxInFlight: plain TCP clients (dotproxy_plain_tcp) pipeline too, as on DoT.
setLocal("127.0.0.1:$UPSTREAM_PLAIN_PORT", {maxInFlight=1000})
addTLSLocal("127.0.0.1:$UPSTREAM_DOT_PORT", "$d/server.pem", "$d/server.key", {provider="openssl", maxInFlight=1000})
setACL({"127.0.0.0/8"})
setMaxTCPClientThreads(1)
setMaxTCPQueriesPerConnection(0)
addAction("bench.test.", SpoofAction("192.0.2.1"))
addAction(AllRule(), RCodeAction(DNSRCode.NXDOMAIN))
EOF
    taskset -c "$LOAD_CPU" dnsdist --supervised --disable-syslog -C "$d/dnsdist.conf" \
        >"$RESULTS_DIR/upstream-dnsdist.log" 2>&1 &
    UPSTREAM_PID=$!
    STARTED_PIDS+=("$UPSTREAM_PID")
}

start_upstream_unbound() {
    local d="$1"
    cat > "$d/unbound.conf" <<EOF
server:
  verbosity: 1
  interface: 127.0.0.1@$UPSTREAM_PLAIN_PORT
  interface: 127.0.0.1@$UPSTREAM_DOT_PORT
  tls-port: $UPSTREAM_DOT_PORT
  tls-service-key: "$d/server.key"
  tls-service-pem: "$d/server.pem"
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "$d"
  pidfile: "$d/unbound.pid"
  use-syslog: no
  logfile: ""
  num-threads: 1
  module-config: "iterator"
  do-ip6: no
  access-control: 127.0.0.0/8 allow
  incoming-num-tcp: 1024
  tcp-idle-timeout: 120000
  minimal-responses: yes
  # cannot recurse: everything outside bench.test is NXDOMAIN
  local-zone: "." static
  # every name under bench.test answers A 192.0.2.1
  local-zone: "bench.test." redirect
  local-data: "bench.test. 300 IN A 192.0.2.1"
remote-control:
  control-enable: no
EOF
    unbound-checkconf "$d/unbound.conf" >/dev/null || die "unbound config invalid: $d/unbound.conf"
    taskset -c "$LOAD_CPU" unbound -d -c "$d/unbound.conf" >"$RESULTS_DIR/upstream-unbound.log" 2>&1 &
    UPSTREAM_PID=$!
    STARTED_PIDS+=("$UPSTREAM_PID")
}

# ---------------------------------------------------------------- targets
# Each start_target_<name> starts the target pinned to TARGET_CPU, answering plain DNS on
# 127.0.0.1 (UDP+TCP), forwarding over DoT to the upstream; it sets TARGET_PID and
# TARGET_PORT and returns non-zero if the target failed to start. Stderr goes to
# $RESULTS_DIR/<name>.log. stop_target stops it.
TARGET_PID="" TARGET_PORT=""

# Runs "$@" pinned to the target core with its output in $RESULTS_DIR/NAME.log,
# as the current target (TARGET_PID), to be stopped by PID at the end.
launch_target() {
    local name="$1"
    shift
    taskset -c "$TARGET_CPU" "$@" >"$RESULTS_DIR/$name.log" 2>&1 </dev/null &
    TARGET_PID=$!
    STARTED_PIDS+=("$TARGET_PID")
}

start_target_dotproxy() { start_dotproxy dotproxy "$DOTPROXY_ARGS"; }
# The same binary with DOTPROXY_DEEP_ARGS added (default: 1000 queries in flight per
# upstream connection instead of 100), to tell configuration limits from code limits.
start_target_dotproxy_deep() { start_dotproxy dotproxy_deep "$DOTPROXY_ARGS $DOTPROXY_DEEP_ARGS"; }

# The same binary on its epoll backend instead of io_uring (--io-backend epoll, the
# backend it falls back to where rings are refused), to compare the two I/O paths.
start_target_dotproxy_epoll() { start_dotproxy dotproxy_epoll "$DOTPROXY_ARGS --io-backend epoll"; }

# The same binary to the upstream's plain port instead of DoT (tcp:// and udp://,
# --allow-plaintext): what TLS costs per query, next to dotproxy.
start_target_dotproxy_plain_tcp() {
    start_dotproxy dotproxy_plain_tcp "$DOTPROXY_ARGS --allow-plaintext" "tcp://127.0.0.1:$UPSTREAM_PLAIN_PORT"
}
start_target_dotproxy_plain_udp() {
    start_dotproxy dotproxy_plain_udp "$DOTPROXY_ARGS --allow-plaintext" "udp://127.0.0.1:$UPSTREAM_PLAIN_PORT"
}

# The rate limiter on at a rate dnsperf never reaches (all of its queries come
# from one prefix), to measure what checking every query costs.
start_target_dotproxy_ratelimit() { start_dotproxy dotproxy_ratelimit "$DOTPROXY_ARGS --rate-limit 10000000"; }

# dnstap on (every message type) into a file, /dev/null by default: the
# shard's copy into its ring plus the writer thread's encoding and writes.
start_target_dotproxy_dnstap() {
    start_dotproxy dotproxy_dnstap "$DOTPROXY_ARGS --dnstap file:${DNSTAP_FILE:-/dev/null}"
}

# Metrics on; dotproxy_scraped is also scraped every second by a loop on LOAD_CPU
# (stopped with the target), so the pair shows what scraping costs per query.
SCRAPER_PID=""
start_target_dotproxy_metrics() {
    METRICS_PORT="$("$PY" "$HELPER" freeports 1)"
    start_dotproxy dotproxy_metrics "$DOTPROXY_ARGS --metrics 127.0.0.1:$METRICS_PORT"
}
start_target_dotproxy_scraped() {
    METRICS_PORT="$("$PY" "$HELPER" freeports 1)"
    start_dotproxy dotproxy_scraped "$DOTPROXY_ARGS --metrics 127.0.0.1:$METRICS_PORT" || return 1
    local url="http://127.0.0.1:$METRICS_PORT/metrics" out="$RESULTS_DIR/dotproxy_scraped.scrapes"
    taskset -c "$LOAD_CPU" bash -c '
        for i in $(seq 1 7200); do
            curl -s -o /dev/null -m 2 -w "%{http_code} %{size_download} %{time_total}\n" "$0" >> "$1"
            sleep 1
        done' "$url" "$out" </dev/null >/dev/null 2>&1 &
    SCRAPER_PID=$!
    STARTED_PIDS+=("$SCRAPER_PID")
}

# Another dotproxy binary (DOTPROXY_BASE, e.g. the previous commit's build) with the
# same arguments, so a change is measured side by side with what it replaces.
start_target_dotproxy_base() {
    [ -n "$DOTPROXY_BASE" ] || { log "target dotproxy_base needs DOTPROXY_BASE=path"; return 1; }
    DOTPROXY_BIN="$DOTPROXY_BASE" start_dotproxy dotproxy_base "$DOTPROXY_ARGS"
}

start_dotproxy() {
    local name="$1" extra="$2" bin="${DOTPROXY_BIN:-$DOTPROXY}"
    local upstream="${3:-127.0.0.1:$UPSTREAM_DOT_PORT#upstream.test}"
    [ -x "$bin" ] || { log "dotproxy binary not found at $bin (set DOTPROXY= or DOTPROXY_BASE=)"; return 1; }
    local ports; ports="$("$PY" "$HELPER" freeports 2)"
    TARGET_PORT="$(sed -n 1p <<<"$ports")" TARGET_TLS_PORT="$(sed -n 2p <<<"$ports")"
    local cmd=("$bin" --listen "127.0.0.1:$TARGET_PORT"
               --upstream "$upstream"
               --ca-file "$CA" --threads 1
               --listen-tls "127.0.0.1:$TARGET_TLS_PORT" --tls-cert "$TARGET_CERT" --tls-key "$TARGET_KEY")
    # shellcheck disable=SC2206
    [ -n "$extra" ] && cmd+=($extra)
    echo "${cmd[*]}" > "$RESULTS_DIR/$name.cmdline"
    launch_target "$name" "${cmd[@]}"
}

# Peer: Unbound as a DoT forwarder (forward-tls-upstream), 1 thread. Its cache cannot
# help: every benchmark name is unique.
start_target_unbound_fwd() {
    local d="$WORK/unbound_fwd"
    mkdir -p "$d"
    TARGET_PORT="$("$PY" "$HELPER" freeports 1)"
    cat > "$d/unbound.conf" <<EOF
server:
  verbosity: 1
  interface: 127.0.0.1@$TARGET_PORT
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "$d"
  pidfile: "$d/unbound.pid"
  use-syslog: no
  logfile: ""
  num-threads: 1
  module-config: "iterator"
  do-ip6: no
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  local-zone: "test." nodefault
  tls-cert-bundle: "$CA"
  incoming-num-tcp: 1024
  num-queries-per-thread: 4096
  outgoing-range: 8192
  minimal-responses: yes
  qname-minimisation: no
  max-reuse-tcp-queries: 1000000
  tcp-reuse-timeout: 120000
forward-zone:
  name: "."
  forward-addr: 127.0.0.1@$UPSTREAM_DOT_PORT#upstream.test
  forward-tls-upstream: yes
remote-control:
  control-enable: no
EOF
    unbound-checkconf "$d/unbound.conf" >/dev/null || { log "unbound_fwd config invalid"; return 1; }
    cp "$d/unbound.conf" "$RESULTS_DIR/unbound_fwd.conf"
    launch_target unbound_fwd unbound -d -c "$d/unbound.conf"
}

# Peer: dnsdist as a DoT forwarder (UDP/TCP in, one DoT backend out), packet cache on
# (100000 entries, like dotproxy's --cache-size). With unique names (miss scenarios) the
# cache never hits but is still consulted and filled, as in every other target.
start_target_dnsdist() {
    local d="$WORK/dnsdist_target"
    mkdir -p "$d"
    local ports; ports="$("$PY" "$HELPER" freeports 2)"
    TARGET_PORT="$(sed -n 1p <<<"$ports")" TARGET_TLS_PORT="$(sed -n 2p <<<"$ports")"
    cat > "$d/dnsdist.conf" <<EOF
-- No security polling: it would query secpoll.powerdns.com via /etc/resolv.conf (off-host).
setSecurityPollSuffix("")
setLocal("127.0.0.1:$TARGET_PORT")
-- DoT clients (hit-dot, miss-dot): the same certificate as dotproxy's listener.
addTLSLocal("127.0.0.1:$TARGET_TLS_PORT", "$TARGET_CERT", "$TARGET_KEY", {provider="openssl"})
setACL({"127.0.0.0/8"})
newServer({address="127.0.0.1:$UPSTREAM_DOT_PORT", tls="openssl", subjectName="upstream.test", caStore="$CA", validateCertificates=true})
pc = newPacketCache(100000, {maxTTL=86400, minTTL=0})
getPool(""):setCache(pc)
setMaxTCPClientThreads(1)
EOF
    cp "$d/dnsdist.conf" "$RESULTS_DIR/dnsdist.conf"
    dnsdist --check-config -C "$d/dnsdist.conf" >/dev/null 2>&1 || { log "dnsdist target config invalid"; return 1; }
    launch_target dnsdist dnsdist --supervised --disable-syslog -C "$d/dnsdist.conf"
}

# Peer: Knot Resolver (kresd, one process) forwarding everything over DoT. DNSSEC
# validation is off (the local upstream has no signed root); cache 100 MB in its rundir.
start_target_kresd() {
    local d="$WORK/kresd"
    mkdir -p "$d"
    TARGET_PORT="$("$PY" "$HELPER" freeports 1)"
    cat > "$d/config.lua" <<EOF
net.ipv6 = false
net.listen('127.0.0.1', $TARGET_PORT, { kind = 'dns' })
cache.open(100 * MB, 'lmdb://$d/cache')
trust_anchors.remove('.')
policy.add(policy.all(policy.TLS_FORWARD({{'127.0.0.1@$UPSTREAM_DOT_PORT', hostname='upstream.test', ca_file='$CA'}})))
EOF
    cp "$d/config.lua" "$RESULTS_DIR/kresd.config.lua"
    launch_target kresd kresd -n -c "$d/config.lua" "$d"
}

# Ceiling: bench/load/reflector.c (recvmmsg, set QR, sendmmsg; one thread). UDP only.
start_target_reflector() {
    [ -x "$WORK/reflector" ] || { log "reflector not built"; return 1; }
    TARGET_PORT="$("$PY" "$HELPER" freeports 1)"
    launch_target reflector "$WORK/reflector" 127.0.0.1 "$TARGET_PORT"
}

# Which scenarios a target can run.
target_supports() {
    local target="$1" sc="$2"
    case "$target:$sc" in
        reflector:hit-udp|reflector:burst) return 0 ;;
        reflector:*) return 1 ;;
        dotproxy*:*-dot|dnsdist:*-dot) return 0 ;;
        *:*-dot) return 1 ;;
        *) return 0 ;;
    esac
}

stop_target() {
    [ -n "$SCRAPER_PID" ] && stop_pid "$SCRAPER_PID"
    SCRAPER_PID=""
    [ -n "$TARGET_PID" ] && stop_pid "$TARGET_PID"
    TARGET_PID=""
}

# ---------------------------------------------------------------- one dnsperf run
RUN_IDX=0
# Names file of the cache-hit set: the same HIT_NAMES names every run, h<n>.bench.test.
write_hit_names() {
    awk -v n="$HIT_NAMES" 'BEGIN { for (i = 1; i <= n; i++) printf "h%d.bench.test A\n", i }' > "$1"
}

# args: target scenario(hit|miss) proto rate [profile [clients]]
run_one() {
    local target="$1" scenario="$2" proto="$3" rate="$4" profile="${5:-0}" clients="${6:-$CLIENTS}"
    RUN_IDX=$((RUN_IDX + 1))
    local label="$rate"; [ "$profile" = 1 ] && label="$rate+perf"
    local tag; tag="$(printf '%02d-%s-%s-%s-%s' "$RUN_IDX" "$target" "$scenario" "$proto" "$label")"
    local raw="$RESULTS_DIR/$tag.dnsperf.txt"
    local data="$WORK/names.txt"
    local mode="${proto%%-*}"
    # The target's DoT listener for its DoT scenarios (the calibration's
    # "dot-1conn" is the upstream's own DoT port, TARGET_PORT).
    local port="$TARGET_PORT"; [ "$proto" = dot ] && port="$TARGET_TLS_PORT"
    if [ "$scenario" = hit ]; then
        write_hit_names "$data"
        # Prime the target's cache (not measured): every name once, over the same transport
        # (dnsdist's cache key includes it).
        timeout -k 5 $((TIMEOUT + 30)) taskset -c "$LOAD_CPU" dnsperf -s 127.0.0.1 -p "$port" \
            -m "$mode" -d "$data" -n 1 -c 1 -q 50 -t "$TIMEOUT" >"$RESULTS_DIR/$tag.prime.txt" 2>&1 || true
        sleep 0.5
    else
        # Fresh, unique names for every run (r<run>-q<n>) so no run repeats another's names.
        awk -v n="$NAMES" -v r="$RUN_IDX" 'BEGIN { for (i = 1; i <= n; i++) printf "r%d-q%d.bench.test A\n", r, i }' > "$data"
    fi

    local args=(-s 127.0.0.1 -p "$port" -m "$mode" -d "$data" -l "$DURATION"
                -c "$clients" -q "$OUTSTANDING" -t "$TIMEOUT")
    [ "$rate" != max ] && args+=(-Q "$rate")
    [ "$PERCENTILES" = 1 ] && args+=(-v)

    local t0 t1 u0 u1 c0a c0b c1a c1b w0 w1
    t0="$(proc_ticks "$TARGET_PID")"; u0="$(proc_ticks "$UPSTREAM_PID")"
    read -r c0a c0b < <(core_jiffies "$LOAD_CPU"); read -r c1a c1b < <(core_jiffies "$TARGET_CPU")
    w0="$(date +%s.%N)"
    log "run $tag: taskset -c $LOAD_CPU dnsperf ${args[*]}"
    local perf_pid="" pname="$target-$scenario-$proto"
    if [ "$profile" = 1 ]; then
        PERF_CPU="$LOAD_CPU" "$REPO/bench/flamegraph/profile.sh" "$TARGET_PID" "$DURATION" \
            "$RESULTS_DIR/flame" "$pname" >"$RESULTS_DIR/flame-$pname.log" 2>&1 &
        perf_pid=$!
        STARTED_PIDS+=("$perf_pid")
    fi
    # Hard bound: dnsperf stops itself after DURATION (+TIMEOUT); timeout(1) is a backstop.
    timeout -k 5 $((DURATION + TIMEOUT + 30)) taskset -c "$LOAD_CPU" dnsperf "${args[@]}" >"$raw" 2>&1 || true
    w1="$(date +%s.%N)"
    t1="$(proc_ticks "$TARGET_PID")"; u1="$(proc_ticks "$UPSTREAM_PID")"
    local c0c c0d c1c c1d
    read -r c0c c0d < <(core_jiffies "$LOAD_CPU"); read -r c1c c1d < <(core_jiffies "$TARGET_CPU")
    if [ -n "$perf_pid" ]; then
        # profile.sh bounds itself (perf for DURATION s, then folding); wait for it.
        if wait "$perf_pid"; then log "flame graph: $(tail -n 1 "$RESULTS_DIR/flame-$pname.log")"
        else log "profiling failed: $(tail -n 3 "$RESULTS_DIR/flame-$pname.log")"; fi
        local keep=() p
        for p in "${STARTED_PIDS[@]}"; do [ "$p" = "$perf_pid" ] || keep+=("$p"); done
        STARTED_PIDS=("${keep[@]}")
    fi
    rm -f "$data"

    local alive=1 note=""
    kill -0 "$TARGET_PID" 2>/dev/null || { alive=0; note="target exited during run"; }
    local wall; wall="$(awk -v a="$w0" -v b="$w1" 'BEGIN { printf "%.3f", b - a }')"
    local c0 c1
    c0="$(awk -v b="$((c0c - c0a))" -v t="$((c0d - c0b))" 'BEGIN { printf "%.1f", t ? 100 * b / t : 0 }')"
    c1="$(awk -v b="$((c1c - c1a))" -v t="$((c1d - c1b))" 'BEGIN { printf "%.1f", t ? 100 * b / t : 0 }')"
    "$PY" "$HELPER" parse "$raw" target="$target" scenario="$scenario" proto="$proto" offered="$label" \
        duration="$DURATION" wall_s="$wall" clk_tck="$CLK_TCK" \
        target_ticks="$((t1 - t0))" upstream_ticks="$((u1 - u0))" \
        core0_busy_pct="$c0" core1_busy_pct="$c1" target_alive="$alive" \
        clients="$clients" outstanding="$OUTSTANDING" raw="$tag.dnsperf.txt$([ "$PERCENTILES" = 1 ] && echo .gz)" \
        ${note:+note="$note"} >> "$RESULTS_DIR/runs.jsonl"
    # One-line summary of this run.
    tail -n 1 "$RESULTS_DIR/runs.jsonl" | "$PY" -c '
import json, sys
r = json.loads(sys.stdin.read())
f = lambda k, s=1e6: "-" if r.get(k) is None else "%.0f" % (r[k] * s)
print("    qps %s  lost %.2f%%  NOERROR %s%%  avg %s us  p99 %s us  cpu %s us/q" % (
    f("qps", 1), r.get("lost_pct", float("nan")), f("noerror_pct", 1), f("avg_s"), f("p99_s"),
    "-" if r.get("target_cpu_us_per_q") is None else "%.1f" % r["target_cpu_us_per_q"]))' >&2 || true
    local completed
    completed="$(grep -oE 'Queries completed: +[0-9]+' "$raw" | grep -oE '[0-9]+$' || echo 0)"
    [ "$scenario" = hit ] || [ "${completed:-0}" -le "$NAMES" ] \
        || log "WARNING: $completed queries > NAMES=$NAMES; names repeated in this run"
    # -v output is one line per response: keep it, compressed.
    [ "$PERCENTILES" = 1 ] && gzip -f "$raw"
    [ "$alive" = 1 ]
}

# BURST_QUERIES unique queries sent at once from BURST_SOCKETS sockets (helper on LOAD_CPU).
run_burst() {
    local target="$1"
    RUN_IDX=$((RUN_IDX + 1))
    log "burst: $BURST_QUERIES queries from $BURST_SOCKETS UDP sockets to $target, window ${BURST_WINDOW}s"
    timeout -k 5 $((BURST_WINDOW + 60)) taskset -c "$LOAD_CPU" "$PY" "$HELPER" burst "$TARGET_PORT" \
        "$BURST_QUERIES" "$BURST_SOCKETS" "$BURST_WINDOW" "b$RUN_IDX" \
        target="$target" proto=udp offered=burst target_pid="$TARGET_PID" clk_tck="$CLK_TCK" \
        > "$WORK/burst.json" 2>"$RESULTS_DIR/$(printf '%02d' "$RUN_IDX")-$target-burst.err" \
        || { log "burst helper failed (see results)"; echo "{\"target\": \"$target\", \"scenario\": \"burst\", \"note\": \"helper failed\"}" > "$WORK/burst.json"; }
    cat "$WORK/burst.json" >> "$RESULTS_DIR/runs.jsonl"
    "$PY" -c '
import json, sys
r = json.load(open(sys.argv[1]))
print("    answered %s/%s within %ss, rcodes %s" % (r.get("answered"), r.get("sent"), r.get("window_s"), r.get("rcodes")))' "$WORK/burst.json" >&2 || true
    kill -0 "$TARGET_PID" 2>/dev/null
}

# ---------------------------------------------------------------- main
check_tools
mkdir -p "$RESULTS_DIR"
WORK="$(mktemp -d /tmp/dotproxy-bench.XXXXXX)"
log "results in $RESULTS_DIR"
{
    echo "date: $(date -Is)"
    echo "host: $(uname -srm), $(nproc) cores: $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "dnsperf: $(dnsperf -h 2>&1 | awk '/Version/ {print $2; exit}'), unbound: $(unbound -V | awk '/Version/ {print $2; exit}'), dnsdist: $(command -v dnsdist >/dev/null && dnsdist --version 2>&1 | awk '{print $2; exit}'), kresd: $(command -v kresd >/dev/null && kresd --version 2>&1 | awk '{print $NF; exit}')"
    echo "dotproxy: $DOTPROXY $DOTPROXY_ARGS; dotproxy_deep: + $DOTPROXY_DEEP_ARGS; dotproxy_epoll: + --io-backend epoll ($(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null)$(cd "$REPO" && git diff --quiet HEAD -- src include 2>/dev/null || echo '+dirty'))"
    echo "targets: $TARGETS; scenarios: $SCENARIOS; hit rates: $HIT_RATES; miss rates: $MISS_RATES; miss tcp rates: $MISS_TCP_RATES"
    echo "duration: ${DURATION}s; clients: $CLIENTS; outstanding: $OUTSTANDING; timeout: ${TIMEOUT}s; hit names: $HIT_NAMES; burst: $BURST_QUERIES queries / $BURST_SOCKETS sockets / ${BURST_WINDOW}s"
    echo "upstream: $UPSTREAM $( [ "$UPSTREAM" = unbound ] && unbound -V | awk '/Version/ {print $2; exit}' || dnsdist --version 2>&1 | awk '{print $2; exit}')"
    echo "pinning: dnsperf + upstream on core $LOAD_CPU, target on core $TARGET_CPU"
} > "$RESULTS_DIR/env.txt"
cat "$RESULTS_DIR/env.txt" >&2

case " $TARGETS " in
    *" reflector "*) cc -O2 -Wall -o "$WORK/reflector" "$HERE/reflector.c" || die "cannot build reflector.c" ;;
esac

start_upstream

FAILED=0
if [ "$CALIBRATE" = 1 ]; then
    # The upstream alone, one DoT connection (what a 1-thread proxy gets), at max.
    TARGET_PID="$UPSTREAM_PID" TARGET_PORT="$UPSTREAM_DOT_PORT"
    log "calibration: upstream $UPSTREAM alone over one DoT connection"
    run_one "upstream:$UPSTREAM" calibration dot-1conn max 0 1 || die "upstream died during calibration"
    TARGET_PID="" TARGET_PORT=""
    sleep 1
fi
fail_row() {  # target scenario proto note
    echo "{\"target\": \"$1\", \"scenario\": \"$2\", \"proto\": \"$3\", \"offered\": \"-\", \"dnsperf_ok\": false, \"note\": \"$4\"}" >> "$RESULTS_DIR/runs.jsonl"
}
for target in $TARGETS; do
    declare -F "start_target_$target" >/dev/null || die "unknown target '$target'"
    log "starting target $target on core $TARGET_CPU"
    if ! "start_target_$target"; then
        fail_row "$target" - - "failed to start"
        FAILED=1
        continue
    fi
    ready_mode=""; [ "$target" = reflector ] && ready_mode=reflect
    protos="udp"
    for sc in $SCENARIOS $([ "$PERF" = 1 ] && echo "$PERF_SCENARIOS"); do
        case "$sc" in *-tcp) target_supports "$target" "$sc" && protos="$protos tcp" ;; esac
        case "$sc" in *-dot) target_supports "$target" "$sc" && protos="$protos dot" ;; esac
    done
    ok=1
    for proto in $protos; do
        extra=""; [ "$proto" = tcp ] && extra="+tcp"
        port="$TARGET_PORT"; [ "$proto" = dot ] && extra="+tls" port="$TARGET_TLS_PORT"
        if ! wait_dns_ready "$port" "$TARGET_PID" "$extra" "$ready_mode"; then
            log "target $target not answering over $proto on 127.0.0.1:$TARGET_PORT within ${READY_TIMEOUT}s; its log:"
            tail -n 50 "$RESULTS_DIR/$target.log" >&2 || true
            fail_row "$target" - "$proto" "not ready (see $target.log)"
            ok=0
        fi
    done
    if [ "$ok" = 1 ]; then
        check_affinity "$TARGET_PID" "$TARGET_CPU" "$target" || true
        log "target $target pid $TARGET_PID ready on 127.0.0.1:$TARGET_PORT ($protos)"
        for sc in $SCENARIOS; do
            target_supports "$target" "$sc" || continue
            case "$sc" in
                hit-udp) points="hit udp $HIT_RATES" ;;
                hit-tcp) points="hit tcp $HIT_RATES" ;;
                miss-udp) points="miss udp $MISS_RATES" ;;
                miss-tcp) points="miss tcp $MISS_TCP_RATES" ;;
                hit-dot) points="hit dot $HIT_RATES" ;;
                miss-dot) points="miss dot $MISS_TCP_RATES" ;;
                burst) points="" ;;
            esac
            if [ "$sc" = burst ]; then
                run_burst "$target" || { log "target $target died during the burst"; ok=0; break; }
                sleep 1
                continue
            fi
            # shellcheck disable=SC2086
            set -- $points
            scen="$1" proto="$2"; shift 2
            for rate in "$@"; do
                if ! run_one "$target" "$scen" "$proto" "$rate"; then
                    log "target $target died during $scen/$proto/$rate; its log:"
                    tail -n 50 "$RESULTS_DIR/$target.log" >&2 || true
                    ok=0; break 2
                fi
                sleep 1
            done
        done
        if [ "$ok" = 1 ] && [ "$PERF" = 1 ]; then
            for sc in $PERF_SCENARIOS; do
                target_supports "$target" "$sc" && [ "$sc" != burst ] || continue
                if ! run_one "$target" "${sc%-*}" "${sc#*-}" max 1; then
                    log "target $target died during the profiled run"; ok=0; break
                fi
                sleep 1
            done
        fi
    fi
    # Anything the target said about errors (its own log), for the report.
    stop_target
    grep -iE 'error|fail|warn|counters:|queries=' "$RESULTS_DIR/$target.log" 2>/dev/null | tail -n 6 \
        | sed "s/^/    [$target.log] /" >&2 || true
    [ "$ok" = 1 ] || { FAILED=1; log "target $target: incomplete (see $RESULTS_DIR/$target.log)"; }
done

stop_pid "$UPSTREAM_PID"

{
    echo "## dotproxy load benchmark ($TS)"
    echo
    sed 's/^/- /' "$RESULTS_DIR/env.txt"
    echo
    "$PY" "$HELPER" table "$RESULTS_DIR/runs.jsonl"
    if grep -q '"scenario": "burst"' "$RESULTS_DIR/runs.jsonl"; then
        echo
        echo "### Burst: $BURST_QUERIES queries at once from $BURST_SOCKETS UDP sockets, answers within ${BURST_WINDOW} s"
        echo
        "$PY" "$HELPER" bursttable "$RESULTS_DIR/runs.jsonl"
    fi
    echo
    echo "### Ratios"
    echo
    "$PY" "$HELPER" ratios "$RESULTS_DIR/runs.jsonl"
} > "$RESULTS_DIR/table.md"
echo
cat "$RESULTS_DIR/table.md"
echo
echo "Raw outputs: $RESULTS_DIR"
exit "$FAILED"
