# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create the virtual environment when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-slow lint bench coverage docs docs-serve clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing pfgdf-plugin and its [dev] extras into $(VENV), at the versions pinned in constraints.txt:"
	@echo "  PyTorch, torchvision, timm, Torch-Pruning, ONNX, ONNX Runtime, matplotlib, PyYAML, scikit-learn,"
	@echo "  mlxtend, pytest, ruff, MkDocs Material (102 packages). On Linux, PyPI's PyTorch wheel brings NVIDIA's"
	@echo "  CUDA libraries and triton along: several GB to download the first time, about 6 GB installed."
	$(PY) -m pip install --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

## The main job on a built-in default: train timm resnet10t on real digits, prune it with PFGDF to half its
## MACs, recalibrate, fine-tune, export to ONNX, measure latency, write demo-out/ (report, plot, models).
demo: $(STAMP)
	$(VENV)/bin/pfgdf demo --output-dir demo-out

## The default test suite (what .ci/run calls): lint, then every test not marked slow and every docstring example.
test: $(STAMP)
	$(PY) -m ruff check pfgdf_plugin tests examples docs/hooks
	$(PY) -m pytest -q -m "not slow" --doctest-modules pfgdf_plugin tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) examples/benchmarks/bench_pfgdf_overhead.py --output bench-out/pfgdf_overhead.json

## The architecture sweep behind docs/architectures.md: every timm module's smallest model, pruned to half its
## MACs, run, exported to ONNX and checked (about an hour on 2 cores with --jobs 2).
coverage: $(STAMP)
	$(VENV)/bin/pfgdf coverage --all --jobs 2 --previous docs/assets/coverage.json --output-dir bench-out/coverage

## The documentation site (docs/, mkdocs.yml): a strict build into site/ that fails on a broken link or a
## missing reference (tests/test_docs.py runs the same build inside `make test`), or a live preview.
docs: $(STAMP)
	$(PY) -m mkdocs build --strict

docs-serve: $(STAMP)
	$(PY) -m mkdocs serve

## Every output folder the README's and the docs' commands write (all of them in .gitignore), and tool caches.
clean:
	rm -rf demo-out bench-out pfgdf-out runs compare-out coverage-out vgg16_out vgg16_pfgdf_out site .pytest_cache .ruff_cache
