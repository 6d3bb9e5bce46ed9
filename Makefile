# speechssl developer targets. `make demo` and `make test` set up .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo demo-all demo-quick test lint bench clean

$(VENV)/.done: pyproject.toml tools/setup.sh
	bash tools/setup.sh $(VENV)
	touch $@

setup: $(VENV)/.done

# The README's first command: the synthetic demo recipe at the size that shows what pretraining
# buys (about 12 minutes on 2 cores; see README "The demo").
demo: setup
	PATH=$(abspath $(VENV))/bin:$$PATH bash egs/synthetic/ssl/run.sh

# Every pretraining family with a recipes/pretrain/<family>_demo.yaml, same size (time in the README).
demo-all: setup
	PATH=$(abspath $(VENV))/bin:$$PATH bash egs/synthetic/ssl/run.sh --models all --exp_dir exp_all

# The CI size: every stage runs, nothing is claimed (about 1.5 minutes).
demo-quick: setup
	PATH=$(abspath $(VENV))/bin:$$PATH bash egs/synthetic/ssl/run.sh --quick

# One torch thread per process: the suite runs many small models and multi-process (DDP)
# tests, where more threads than cores only add contention.
test: setup
	PATH=$(abspath $(VENV))/bin:$$PATH OMP_NUM_THREADS=1 MPLBACKEND=Agg $(PY) -m pytest -q -p no:cacheprovider tests

lint: setup
	$(VENV)/bin/ruff check speechssl tests tools

bench: setup
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) tools/bench/run_all.py --out bench

clean:
	rm -rf $(VENV) .pytest_cache
