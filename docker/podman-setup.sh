#!/usr/bin/env bash
# Make rootful podman usable on a bare Debian 12 machine without a Docker engine, idempotently:
# install podman & co. when missing, write containers.conf / storage.conf under $PODMAN_ROOT when
# missing, and import a local Debian base image ($BASE_IMAGE) made with debootstrap when missing
# (no image registry is needed). Source docker/podman-env.sh to use the same podman afterwards.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=docker/podman-env.sh
. "$here/podman-env.sh"

SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
need=()
for pkg in podman buildah runc fuse-overlayfs slirp4netns uidmap debootstrap tini catatonit; do
  dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "podman-setup: installing ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

mkdir -p "$PODMAN_ROOT"
# crun fails here (cgroups hybrid mode) and default rlimits are refused: runc + explicit ulimits.
if [ ! -s "$CONTAINERS_CONF" ]; then
  cat > "$CONTAINERS_CONF" <<X
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
X
fi
if [ ! -s "$CONTAINERS_STORAGE_CONF" ]; then
  # The first podman command on a store must already use this file (else every run hangs 20 s).
  cat > "$CONTAINERS_STORAGE_CONF" <<X
[storage]
driver = "overlay"
graphroot = "$PODMAN_ROOT/storage"
runroot = "$PODMAN_ROOT/run"
X
fi

if ! podman image exists "$BASE_IMAGE"; then
  mirror="$(sed -n 's/^URIs: *\(http[^ ]*debian\/\{0,1\}\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)"
  [ -n "$mirror" ] || mirror="$(awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }' /etc/apt/sources.list 2>/dev/null)"
  [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
  rootfs="$PODMAN_ROOT/rootfs"
  echo "podman-setup: debootstrap bookworm from $mirror -> $BASE_IMAGE" >&2
  $SUDO rm -rf "$rootfs"
  $SUDO debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$PODMAN_ROOT/debootstrap.log" 2>&1 \
    || { tail -n 20 "$PODMAN_ROOT/debootstrap.log" >&2; exit 1; }
  $SUDO rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  $SUDO tar -C "$rootfs" -c . | podman import - "$BASE_IMAGE" >/dev/null
  $SUDO rm -rf "$rootfs"
fi
echo "podman-setup: ready (PODMAN_ROOT=$PODMAN_ROOT, base $BASE_IMAGE)" >&2
