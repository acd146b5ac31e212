# The README's commands: `make run` (the tutorial), `make test` (the suite), `make bench` (the benchmark).
# Both create .venv with Python 3.8 and install the pinned lock on first use; later calls reuse it.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: run test bench clean notebook picture demo-network
run: $(STAMP)
	$(PY) federated_learning_smpc.py $(ARGS)

# Three `fl-smpc worker` processes on free loopback ports, five rounds over websockets, workers stopped.
demo-network: $(STAMP)
	$(PY) -m fl_smpc demo-network $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

# ARGS=--quick for a smoke run; tables go to results/bench (JSON + CSV).
bench: $(STAMP)
	$(PY) benchmarks/bench.py $(ARGS)

# syft 0.2.9 has wheels for Python <= 3.8 only. Use python3.8 if it works, else pyenv's 3.8.
$(PY):
	@set -e; \
	if python3.8 --version >/dev/null 2>&1; then py="python3.8"; \
	elif PYENV_VERSION=3.8 python3.8 --version >/dev/null 2>&1; then py="env PYENV_VERSION=3.8 python3.8"; \
	else echo "error: Python 3.8 not found. syft 0.2.9 needs Python 3.8: install it (e.g. 'pyenv install 3.8' or your distribution's python3.8) so that 'python3.8' runs, then retry." >&2; exit 1; fi; \
	echo "creating $(VENV) with $$($$py --version)"; \
	$$py -m venv $(VENV)

# --no-deps: the lock pins every transitive dependency (see requirements.txt for why).
$(STAMP): requirements.txt pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

# The tutorial notebook in Jupyter (notebook 5.7.8 from the lock), kernel = this .venv's python:
# JUPYTER_PATH puts the venv's "python3" kernelspec (argv "python" -> the server's interpreter) ahead of
# any user-level one. Stop the server with Ctrl-C.
notebook: $(STAMP)
	JUPYTER_PATH=$(CURDIR)/$(VENV)/share/jupyter $(PY) -m notebook --ip=127.0.0.1 \
		--notebook-dir=examples examples/federated_learning_smpc.ipynb $(ARGS)

# The README's training picture: the default run with --seed 0.
picture: $(STAMP)
	$(PY) federated_learning_smpc.py --seed 0 --plot docs/training.png

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
