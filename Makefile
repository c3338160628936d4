# Two commands do everything on a fresh machine with Python 3.11+:
#   make test   — create .venv, install tunnelnb with its test extras, lint, run the whole suite
#   make demo   — create .venv, install, run the demo on the embedded local platform
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test demo lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check tunnelnb tests bench

# pytest exits 5 when it collected no tests: that is a failure here, never a pass.
test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

demo: $(STAMP)
	$(BIN)/tunnelnb demo

bench: $(STAMP)
	$(BIN)/python bench/relay.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
