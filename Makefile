# Two commands do everything on a fresh machine with Python 3.11+:
#   make test   — create .venv, install tunnelnb with its dev extras, lint, run the whole suite
#   make demo   — create .venv, install, start a local platform, a simulated fleet and JupyterLab
#                 on the quickstart notebook
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
# The terminal widget's front end (make js) and what it is built from.
JS_BUNDLE  := tunnelnb/notebook/widgets/static/terminal.js
JS_SOURCES := $(wildcard js/src/*) js/build.mjs js/package.json $(wildcard js/package-lock.json)

.PHONY: test demo lint bench notebooks clean js

# The notebooks are tests too: nbval runs each one and compares its outputs with the saved ones.
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg

# The terminal widget's front end (xterm.js, from npm) is built before the install (order-only: a rebuilt
# bundle needs no reinstall), so `make test` and `make demo` have it and a wheel includes it.
$(STAMP): pyproject.toml | $(JS_BUNDLE)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The terminal widget's front end: js/ (package.json, its lockfile, src/, build.mjs) bundled by esbuild into
# tunnelnb/notebook/widgets/static/ (not committed), again whenever a source or the lockfile is newer.
js: $(JS_BUNDLE)

$(JS_BUNDLE): $(JS_SOURCES)
	@command -v npm >/dev/null || { echo "make js: npm is missing: install Node.js 18+ and npm (Debian: apt-get install nodejs npm)" >&2; exit 1; }
	cd js && if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
	cd js && npm run build
	touch $(JS_BUNDLE)

# Style (ruff), the layering contracts of pyproject.toml (import-linter), types (mypy; strict on
# tunnelnb.protocol and tunnelnb.client).
lint: $(STAMP)
	$(BIN)/ruff check tunnelnb tests bench notebooks
	$(BIN)/lint-imports
	$(BIN)/mypy

# pytest exits 5 when it collected no tests: that is a failure here, never a pass.
test: lint
	$(BIN)/python -m pytest $(NBVAL) tests notebooks $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

demo: $(STAMP)
	$(BIN)/tunnelnb demo

# Re-run every notebook against the embedded fleet and save its outputs (after changing one).
notebooks: $(STAMP)
	$(BIN)/python notebooks/execute.py

# The benchmarks' peers (parallel-ssh and its dependencies: pyproject.toml's bench group), once.
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

# Short runs of every benchmark (each under about a minute on 2 cores; bench/README.md has the full ones).
bench: $(BENCH_STAMP)
	$(BIN)/python bench/relay.py --quick --stages
	$(BIN)/python bench/fanout.py --quick
	$(BIN)/python bench/wan.py --quick
	$(BIN)/python bench/devices_mqtt.py --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
