#!/usr/bin/env bash
# stack/container.sh: what the container test (tests/container) needs on a Debian 12 machine with no
# docker and no image registry: Debian's podman, and a local base image to build the worker image on.
#
#   stack/container.sh up       install the tools (apt, once), build + import the base image (once)
#   stack/container.sh status   one line; exit 0 when both are there
#
# The base image localhost/procos-base:bookworm-py311 is Debian 12 minbase with python3 (3.11),
# python3-venv and ca-certificates, made by mmdebstrap from the host's apt sources and loaded with
# `podman import`. The rootfs tarball is cached in ${PROCOS_STACK_HOME:-$HOME/.cache/procos-stack}/container/
# (keyed by this recipe), so a machine whose podman store was wiped re-imports it in seconds.
# Idempotent: a second `up` changes nothing.
set -euo pipefail

STACK_HOME="${PROCOS_STACK_HOME:-$HOME/.cache/procos-stack}"
CHOME="$STACK_HOME/container"
LOG="$STACK_HOME/logs/container.log"
BASE_IMAGE="localhost/procos-base:bookworm-py311"
PACKAGES="python3,python3-venv,ca-certificates"
TOOLS=(podman runc uidmap slirp4netns fuse-overlayfs mmdebstrap)
# What the podman commands here and in the tests need on these machines (see real-stack.md).
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs)

say() { printf 'container: %s\n' "$*" >&2; }
die() { printf 'container: ERROR: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [[ $EUID -eq 0 ]]; then "$@"; else sudo -n "$@"; fi
}

tools_missing() {
  local t
  for t in podman runc mmdebstrap newuidmap slirp4netns fuse-overlayfs; do
    command -v "$t" >/dev/null || return 0
  done
  return 1
}

install_tools() {
  tools_missing || return 0
  say "installing ${TOOLS[*]} from Debian packages (log $LOG)"
  # scripts/stack runs this beside other apt-get installs on a cold machine: wait for their lock.
  local wait_lock=(-o DPkg::Lock::Timeout=900)
  {
    as_root apt-get "${wait_lock[@]}" update -qq &&
      as_root env DEBIAN_FRONTEND=noninteractive apt-get "${wait_lock[@]}" install -y -qq --no-install-recommends "${TOOLS[@]}"
  } >>"$LOG" 2>&1 || { tail -n 20 "$LOG" >&2; die "apt-get install ${TOOLS[*]} failed, see $LOG"; }
}

recipe_key() { printf '%s\n' "bookworm minbase $PACKAGES $(uname -m)" | sha256sum | cut -c1-12; }

ensure_base() {
  local tar="$CHOME/procos-base-$(recipe_key).tar" t0=$SECONDS
  if [[ ! -f "$tar" ]]; then
    say "building the base rootfs with mmdebstrap (bookworm minbase + $PACKAGES; ~30 s, log $LOG)"
    rm -f "$tar.tmp"
    mmdebstrap --variant=minbase --include="$PACKAGES" --format=tar bookworm "$tar.tmp" >>"$LOG" 2>&1 \
      || { tail -n 20 "$LOG" >&2; die "mmdebstrap failed, see $LOG"; }
    mv "$tar.tmp" "$tar"
    find "$CHOME" -maxdepth 1 -name 'procos-base-*.tar' ! -name "$(basename "$tar")" -delete
    say "base rootfs built in $((SECONDS - t0)) s ($(du -h "$tar" | cut -f1))"
  fi
  local want have
  want="$(recipe_key)"
  have="$("${PODMAN[@]}" image inspect --format '{{index .Labels "procos.recipe"}}' "$BASE_IMAGE" 2>/dev/null || true)"
  if [[ "$have" != "$want" ]]; then
    t0=$SECONDS
    "${PODMAN[@]}" import --change "LABEL procos.recipe=$want" --change 'CMD ["python3"]' \
      "$tar" "$BASE_IMAGE" >>"$LOG" 2>&1 || { tail -n 20 "$LOG" >&2; die "podman import failed, see $LOG"; }
    say "imported $BASE_IMAGE in $((SECONDS - t0)) s"
  fi
}

cmd_up() {
  local t0=$SECONDS
  mkdir -p "$CHOME" "$(dirname "$LOG")"
  exec 9>"$CHOME/.lock"
  flock 9
  install_tools
  ensure_base
  say "up: podman $(podman --version | awk '{print $3}'), base image $BASE_IMAGE ($((SECONDS - t0)) s)"
}

cmd_status() {
  if tools_missing; then
    echo "container: tools missing (run stack/container.sh up)"
    return 3
  fi
  if ! "${PODMAN[@]}" image exists "$BASE_IMAGE" 2>/dev/null; then
    echo "container: podman present, base image $BASE_IMAGE missing (run stack/container.sh up)"
    return 3
  fi
  echo "container: podman $(podman --version | awk '{print $3}'), base image $BASE_IMAGE"
}

case "${1:-}" in
  up) cmd_up ;;
  status) cmd_status ;;
  *)
    echo "usage: $0 up|status" >&2
    exit 2
    ;;
esac
