# shellcheck shell=bash
# Source me: points podman/buildah at qaembed's own config and store under $PODMAN_ROOT.
PODMAN_ROOT="${PODMAN_ROOT:-/var/tmp/qaembed-podman}"
BASE_IMAGE="${BASE_IMAGE:-localhost/debian-base:bookworm}"
SERVE_IMAGE="${SERVE_IMAGE:-localhost/qaembed-serve:cpu}"
TRAIN_IMAGE="${TRAIN_IMAGE:-localhost/qaembed-train:cpu}"
CONTAINERS_CONF="$PODMAN_ROOT/containers.conf"
CONTAINERS_STORAGE_CONF="$PODMAN_ROOT/storage.conf"
export PODMAN_ROOT BASE_IMAGE SERVE_IMAGE TRAIN_IMAGE CONTAINERS_CONF CONTAINERS_STORAGE_CONF
