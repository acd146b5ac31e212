# The README's commands: `make run` (the tutorial), `make test` (the suite), `make bench` (the benchmark),
# `make check` (ruff + mypy). All create .venv with Python 3.8 and install the pinned lock on first use;
# later calls reuse it.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check --no-deps
# What `make check` lints, format-checks and type-checks.
CHECKED := fl_smpc benchmarks federated_learning_smpc.py $(wildcard examples/*.py)
ARGS   ?=

.PHONY: run test check format bench clean notebook picture demo-network figures dp-study dp-figure
# @: the recipe is not echoed, so stdout is the program's alone (`make run ARGS="--json" | python3 -m json.tool`).
run: $(STAMP)
	@$(PY) federated_learning_smpc.py $(ARGS)

# Three `fl-smpc worker` processes on free loopback ports, a throw-away federation (CA + certificates),
# five rounds over mutual TLS, workers stopped.
demo-network: $(STAMP)
	@$(PY) -m fl_smpc demo-network $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

# ruff lint, ruff format check, mypy: all three run, and the target fails if any of them failed.
check: $(DEV_STAMP)
	@status=0; \
	echo "== ruff check"; $(PY) -m ruff check $(CHECKED) || status=1; \
	echo "== ruff format --check"; $(PY) -m ruff format --check $(CHECKED) || status=1; \
	echo "== mypy"; $(PY) -m mypy $(CHECKED) || status=1; \
	exit $$status

# Rewrites the checked files: ruff's safe fixes (import order, ...), then ruff format.
format: $(DEV_STAMP)
	$(PY) -m ruff check --fix $(CHECKED)
	$(PY) -m ruff format $(CHECKED)

# ARGS=--quick for a smoke run; tables go to results/bench (JSON + CSV).
bench: $(STAMP)
	$(PY) benchmarks/bench.py $(ARGS)

# Differential privacy on SMS (docs/privacy.md): every DP variant at epsilon 1, 3, 8 and the run without DP, seeds
# 0-2 (about 10 min), written to docs/data/dp_sms.csv; then dp-figure. dp-figure alone redraws
# docs/dp_f1_epsilon.png from that file (the tables in README.md and docs/privacy.md: `make figures`).
dp-study: $(STAMP)
	$(PY) benchmarks/dp_sms.py --study --figure

dp-figure: $(STAMP)
	$(PY) benchmarks/dp_sms.py --figure

# syft 0.2.9 has wheels for Python <= 3.8 only. tools/find-python38.sh picks python3.8, pyenv's 3.8, or
# uv with a uv-managed CPython 3.8 (docs/setup.md) and prints the command that creates the venv.
# Setting up says what it does on stderr (and pip is --quiet), so even a first `make run ARGS=--json` pipes.
$(PY):
	@cmd=$$(sh tools/find-python38.sh $(VENV) .tools) || exit 1; \
	echo "creating $(VENV): $$cmd" >&2; \
	eval "$$cmd" >&2 && echo "created $(VENV) with $$($(PY) --version)" >&2

# --no-deps: the lock pins every transitive dependency (see requirements.txt for why).
# pip, setuptools and wheel go first, at the lock's versions: that pip accepts syft 0.2.9's metadata, and the
# lock's few sdists are then built as wheels by PEP 517 against the pinned setuptools
# (--use-pep517 --no-build-isolation: no unpinned build tools, no legacy `setup.py install`).
$(STAMP): requirements.txt pyproject.toml | $(PY)
	@echo "installing the lock into $(VENV): pip, setuptools, wheel; requirements.txt (--no-deps); fl-smpc (-e .)" >&2
	@$(PIP) -c requirements.txt pip setuptools wheel >&2
	@$(PIP) --use-pep517 --no-build-isolation -r requirements.txt >&2
	@$(PIP) --no-build-isolation -e . >&2
	@touch $@

# The dev tools (ruff, mypy), pinned in requirements-dev.txt, on top of the main lock.
$(DEV_STAMP): requirements-dev.txt $(STAMP)
	$(PIP) -r requirements-dev.txt
	@touch $@

# The tutorial notebook in Jupyter (notebook 5.7.8 from the lock), kernel = this .venv's python:
# JUPYTER_PATH puts the venv's "python3" kernelspec (argv "python" -> the server's interpreter) ahead of
# any user-level one. Stop the server with Ctrl-C. As root (a container), notebook 5.7.8 refuses to start
# without --allow-root, so it is added when the effective user id is 0.
notebook: $(STAMP)
	JUPYTER_PATH=$(CURDIR)/$(VENV)/share/jupyter $(PY) -m notebook --ip=127.0.0.1 \
		$$([ "$$(id -u)" = 0 ] && echo --allow-root) \
		--notebook-dir=examples examples/federated_learning_smpc.ipynb $(ARGS)

# The figures the docs show (sample outputs, result tables between <!-- figure NAME --> markers), made afresh
# and written back (about 2.5 min; ARGS="--check" only compares, ARGS="toy-results" picks one).
figures: $(STAMP)
	$(PY) benchmarks/doc_figures.py $(ARGS)

# The README's training picture: the default run with --seed 0.
picture: $(STAMP)
	$(PY) federated_learning_smpc.py --seed 0 --plot docs/training.png

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
