# The README's commands: make run, make test, make bench.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench fuzz chaos clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): requirements.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

$(VENV)/.installed-dev: requirements-dev.txt $(STAMP)
	$(PY) -m pip install --quiet -r requirements-dev.txt torch==2.13.0
	touch $@

run: $(STAMP)
	$(PY) -m rlv3site.launch run

test: $(STAMP)
	$(PY) -m rlv3site.launch test $(PYTEST_ARGS)

bench: $(VENV)/.installed-dev
	$(PY) bench/run_all.py

# A long fuzzing campaign of every API operation (the suite runs a short one).
fuzz: $(STAMP)
	RLV3_FUZZ_EXAMPLES=$${RLV3_FUZZ_EXAMPLES:-500} $(PY) -m rlv3site.launch test tests/test_fuzz_api.py -q

# The full chaos run (10,000 signals; needs PostgreSQL: DATABASE_URL=postgres://...). The suite runs a small one.
chaos: $(STAMP)
	$(PY) bench/chaos.py --signals $${RLV3_CHAOS_SIGNALS:-10000} --seconds $${RLV3_CHAOS_SECONDS:-120}

clean:
	rm -rf $(VENV) staticfiles .pytest_cache .hypothesis
