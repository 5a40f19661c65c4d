# Two commands do all the set-up on a fresh clone:
#   make demo   -- create .venv, install l3m, lint + graph the examples, train one end to end
#   make test   -- create .venv, install l3m, lint every shipped .l3m file, check their layout (l3m fmt),
#                  run the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
L3M    := $(VENV)/bin/l3m
STAMP  := $(VENV)/.installed-stamp
L3M_FILES := $(wildcard models/*.l3m examples/*.l3m)
export WANDB_MODE ?= offline

.PHONY: setup demo test lint-code bench clean graphviz

setup: $(STAMP) graphviz

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Graphviz renders .svg/.png graphs; everything else works without it.
graphviz:
	@command -v dot >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz) >/dev/null 2>&1; } || \
	  echo "note: Graphviz not installed; 'l3m graph --render x.svg' will say so (.dot/.mmd/.txt/.json still work)"

demo: setup
	$(L3M) lint examples/*.l3m
	$(L3M) graph examples/vit_digits.l3m
	$(L3M) graph examples/vit_digits.l3m --render runs/vit_digits.mmd
	$(L3M) train examples/vit_digits.l3m --output runs/vit_digits --no-resume

test: setup
	$(L3M) lint $(L3M_FILES)
	$(L3M) fmt --check models examples
	$(PY) -m pytest -q -n 2

lint-code: setup
	$(VENV)/bin/ruff check l3m tests benchmarks

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
