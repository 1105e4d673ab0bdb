# Kiln's entry points. The local cluster's targets call the scripts in hack/ (see docs/local-cluster.md).
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help demo venv crds docs lock test test-unit build cluster-up cluster-down cluster-purge argocd-up argocd-down images

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

VENV := $(HOME)/.cache/kiln/venv
PY := $(VENV)/bin/python
# This checkout's code first: the shared venv's editable install may point at another clone.
export PYTHONPATH := $(CURDIR)/operator:$(CURDIR)/serving_image

demo: ## The main job: local cluster, artifact store, operator, and the whole loop from data to retraining
	bash hack/demo.sh

venv: ## Create or refresh the project's virtualenv in ~/.cache/kiln/venv
	@bash hack/venv.sh >/dev/null

crds: venv ## Regenerate crds/ (and the kiln-crds chart's copy) from the pydantic models in operator/kiln_operator/api
	$(PY) -m kiln_operator.api.crdgen --out crds --out charts/kiln-crds/files
	cp crds/kopf.dev_*.yaml charts/kiln-crds/files/  # kopf's peering CRDs: hand-written, shipped alike

docs: venv ## Regenerate docs/api-reference.md from the pydantic models
	$(PY) -m kiln_operator.api.docgen --out docs/api-reference.md

lock: ## Re-resolve constraints.txt, the pins both images and the venv install (ARGS="-P numpy" moves one)
	bash hack/lock.sh $(ARGS)

test-unit: venv ## Run the unit tests (no cluster)
	$(PY) -m pytest tests/unit -q

test: ## Run every test: installs what is missing, starts the local cluster (the README's test command)
	bash hack/test.sh

build: ## Build the pinned Kubernetes binaries and etcd into ~/.cache/kiln (once; minutes when cold)
	bash hack/build-k8s.sh
	bash hack/build-etcd.sh

cluster-up: ## Start the local cluster (KILN_NODE=0: control plane only); prints export KUBECONFIG=...
	bash hack/cluster-up.sh

cluster-down: ## Stop the local cluster, leaving nothing running (state kept for a fast warm start)
	bash hack/cluster-down.sh

cluster-purge: ## Stop the local cluster and delete its state (PKI, etcd data)
	KILN_PURGE=1 bash hack/cluster-down.sh

argocd-up: ## Run Argo CD (built from its Go module, ~6 min cold) as pods in the local cluster, namespace argocd
	bash hack/argocd-up.sh

argocd-down: ## Remove Argo CD from the local cluster (namespace argocd, its CRDs and cluster RBAC)
	bash hack/argocd-down.sh

images: ## Build the runtime and operator images with buildah and import them into the node (root)
	bash hack/build-images.sh runtime operator
