# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint format typecheck bench docs clean

# (Re)create the environment when it is missing or pyproject.toml or this file changed.
# simglucose (a test reference) without its dependencies: they pin gym==0.9.4 and gymnasium.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps "simglucose==0.2.11"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/twins demo

# The tests' JAX compilation cache (pkpd/_config.py), outside the clone; CI may point it at a
# folder it keeps between runs (make test TEST_CACHE=...) or turn it off (TEST_CACHE=off).
# Each xdist worker uses its own subfolder of it (tests/conftest.py). A damaged entry (a run
# killed while writing one) makes JAX warn and compile the program itself, which is not an
# error here (docs/getting-started.md, "Compilation cache").
TEST_CACHE ?= $(HOME)/.cache/pkpd-twins/jax-test
# make test compiles with XLA's backend optimisation level 0 and without LLVM's expensive
# passes (about a third less CPU time, most of a test being compilation; the same programs in
# IEEE arithmetic, slower to run); make test-all compiles as users do. `make test
# TEST_XLA_FLAGS=` turns this off; XLA_FLAGS of your own are kept (docs/testing.md).
TEST_XLA_FLAGS ?= --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true
TEST_ENV := PKPD_TWINS_CACHE="$(TEST_CACHE)"
CACHE_RACE := -W "ignore:Error reading persistent compilation cache entry:UserWarning"

test: $(STAMP)
	$(TEST_ENV) XLA_FLAGS="$(strip $(XLA_FLAGS) $(TEST_XLA_FLAGS))" \
		$(BIN)/python -m pytest -q -n 2 --dist worksteal $(CACHE_RACE) -m "not extended"

# Every test, the extended ones included: slow checks, most of whose ground `make test` also
# covers (each says so where it is marked); several of them take minutes on 2 cores.
test-all: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -q -n 2 --dist worksteal $(CACHE_RACE)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP)
	$(BIN)/pyright

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

docs: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[docs]"
	$(BIN)/python tools/fetch_mathjax.py  # MathJax served with the site, not from a CDN
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) out site .pytest_cache .ruff_cache
