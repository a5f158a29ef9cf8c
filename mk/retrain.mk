# Retraining loop demo (issue 6). Included by the Makefile (-include mk/*.mk).
#
#   make retrain-demo   publish v1, serve it, post feedback, export it, retrain with the promotion
#                       gate, print before/after metrics, watch the service swap to v2; then exits
.PHONY: retrain-demo

retrain-demo: install
	PY=$(PY) DEMO_DIR=$(DEMO_DIR)/retrain scripts/retrain-demo.sh
