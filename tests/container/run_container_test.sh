#!/usr/bin/env bash
# Builds the dotproxy image from the repo's Dockerfile with podman and runs the
# container cases of dotproxy_container.py: container_default_seccomp_epoll
# (under podman's default seccomp profile io_uring is refused, dotproxy must
# fall back to epoll and answer) and container_seccomp_profile_uring (with
# deploy/seccomp/dotproxy.json and the Kubernetes hardening it runs on
# io_uring). Both check the metrics endpoint.
#
#   tests/container/run_container_test.sh [SOURCE_ROOT [CASE...]]   (default: both cases)
#
# The steps follow the platform notes (PLATFORM.md) "Operations tooling" for this sandbox:
#   1. root only; `apt-get install -y podman runc mmdebstrap` if podman is missing
#   2. base image debian:bookworm-slim, if missing: `mmdebstrap --variant=minbase
#      bookworm BASE.tar` + `podman import BASE.tar debian:bookworm-slim`
#   3. `podman --runtime runc build --isolation chroot`, tagged
#      dotproxy-test:ctx-HASH (HASH: the build context's contents, so an
#      unchanged tree reuses the image; older ctx-* tags are removed)
#   4. the case, which starts and removes its own containers
#      (dotproxy-test-<pid>, labelled with this run's id; any left over are
#      removed here on exit).
#
# Exit: 0 pass, 1 fail (the image does not build, or the case fails), 77 skip
# (podman cannot work here: not root, cannot be installed, no base image, or
# `podman info` fails). Every step has a timeout.
set -uo pipefail

SKIP=77
SRC="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
SRC="$(cd "$SRC" && pwd)" || { echo "FAIL: no source root $1"; exit 1; }
shift || true
CASES=("$@")
[ "${#CASES[@]}" -gt 0 ] || CASES=(container_default_seccomp_epoll container_seccomp_profile_uring)
IMAGE_REPO="dotproxy-test"
BASE_IMAGE="debian:bookworm-slim"
RUN_ID="dotproxy-test-run=$$-$(date +%s)"
PODMAN=(podman --runtime runc)
export DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1

WORK="$(mktemp -d /tmp/dotproxy-container.XXXXXX)"
CASE_PID=""
# shellcheck disable=SC2317  # reached through the EXIT trap
cleanup() {
  if [ -n "$CASE_PID" ] && kill -0 "$CASE_PID" 2>/dev/null; then
    kill -TERM "$CASE_PID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$CASE_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$CASE_PID" 2>/dev/null
  fi
  if command -v podman >/dev/null 2>&1; then
    local ids
    ids="$(timeout 30 "${PODMAN[@]}" ps -a -q --filter "label=$RUN_ID" 2>/dev/null)"
    if [ -n "$ids" ]; then
      echo "removing leftover containers of this run: $ids"
      # shellcheck disable=SC2086
      timeout 60 "${PODMAN[@]}" rm --force --time 2 $ids >/dev/null 2>&1
    fi
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

skip() { echo "SKIP: $*"; exit "$SKIP"; }
step() { echo "== $*"; }
since() { echo $(( $(date +%s) - $1 )); }

# 1. root and podman
[ "$(id -u)" -eq 0 ] || skip "needs root (podman runs rootful here; see PLATFORM.md)"
need=()
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v runc >/dev/null 2>&1 || need+=(runc)
if ! timeout 10 "${PODMAN[@]}" image exists "$BASE_IMAGE" 2>/dev/null; then
  command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
fi
if [ "${#need[@]}" -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || skip "${need[*]} missing and no apt-get to install them"
  step "installing ${need[*]} (apt-get)"
  t=$(date +%s)
  if ! timeout 300 apt-get install -y --no-install-recommends "${need[@]}" >"$WORK/apt.log" 2>&1; then
    # The package lists may be stale or absent: refresh once and retry.
    if ! { timeout 300 apt-get update && timeout 300 apt-get install -y \
             --no-install-recommends "${need[@]}"; } >>"$WORK/apt.log" 2>&1; then
      tail -n 15 "$WORK/apt.log"
      skip "cannot install ${need[*]} with apt-get (log tail above)"
    fi
  fi
  echo "installed in $(since "$t") s"
fi
if ! out="$(timeout 60 "${PODMAN[@]}" info --format '{{.Host.OCIRuntime.Name}} {{.Host.CgroupsVersion}}' 2>&1)"; then
  echo "$out" | tail -n 10
  skip "podman --runtime runc info fails: podman cannot work here"
fi
echo "podman $(podman --version | awk '{print $3}'), runtime/cgroups: $out"

# 2. base image
if ! timeout 10 "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
  step "making $BASE_IMAGE from Debian packages (mmdebstrap --variant=minbase bookworm)"
  t=$(date +%s)
  if ! timeout 300 mmdebstrap --variant=minbase bookworm "$WORK/base.tar" >"$WORK/mmdebstrap.log" 2>&1; then
    tail -n 15 "$WORK/mmdebstrap.log"
    skip "mmdebstrap could not make the base image (no Debian mirror?)"
  fi
  if ! timeout 300 "${PODMAN[@]}" import "$WORK/base.tar" "$BASE_IMAGE" >"$WORK/import.log" 2>&1; then
    tail -n 15 "$WORK/import.log"
    skip "podman import of the base image failed"
  fi
  rm -f "$WORK/base.tar"
  echo "base image made in $(since "$t") s"
fi

# 3. the image, cached by the build context's contents (the files the
# Dockerfile can see: .dockerignore's patterns left out, plus Python caches).
cd "$SRC" || exit 1
[ -f Dockerfile ] || { echo "FAIL: no Dockerfile in $SRC"; exit 1; }
hash="$(find . \( -name .git -o -path './build*' -o -path ./bench/load/results \
                   -o -name __pycache__ -o -name '*.pyc' \) -prune -o -type f -print0 \
        | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)"
IMAGE="$IMAGE_REPO:ctx-$hash"
if timeout 10 "${PODMAN[@]}" image exists "$IMAGE"; then
  step "image $IMAGE is up to date (build context unchanged): not rebuilding"
else
  step "building $IMAGE (podman build --isolation chroot -f Dockerfile $SRC)"
  t=$(date +%s)
  timeout 600 "${PODMAN[@]}" build --isolation chroot --force-rm -t "$IMAGE" \
    -f Dockerfile . >"$WORK/build.log" 2>&1
  rc=$?
  if [ "$rc" -ne 0 ]; then
    tail -n 40 "$WORK/build.log"
    [ "$rc" -eq 124 ] && echo "FAIL: podman build timed out after 600 s" \
                      || echo "FAIL: podman build exited $rc (log tail above)"
    exit 1
  fi
  echo "built in $(since "$t") s"
  # Older images of this test, by their ctx- tags (ours only).
  for old in $(timeout 30 "${PODMAN[@]}" images --format '{{.Repository}}:{{.Tag}}' \
                 --filter "reference=$IMAGE_REPO:ctx-*" 2>/dev/null); do
    [ "${old##*/}" = "$IMAGE" ] || timeout 60 "${PODMAN[@]}" rmi "$old" >/dev/null 2>&1
  done
fi
timeout 30 "${PODMAN[@]}" image inspect --format 'image {{.Id}}: {{.Size}} bytes' "$IMAGE"

# 4. the cases (they remove their own containers; cleanup() catches leftovers)
step "cases ${CASES[*]}"
case_args=()
for c in "${CASES[@]}"; do case_args+=(--case "$c"); done
timeout 300 /usr/bin/python3 "$SRC/tests/container/dotproxy_container.py" \
  --image "$IMAGE" --label "$RUN_ID" "${case_args[@]}" &
CASE_PID=$!
wait "$CASE_PID"
rc=$?
CASE_PID=""
[ "$rc" -eq 124 ] && echo "FAIL: the cases timed out after 300 s"
exit "$rc"
