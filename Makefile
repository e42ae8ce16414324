# `make demo`: set up .venv and run the main job end to end on the demo corpus shipped in the repo.
# `make test`: set up .venv if needed and run the test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_OUT := demo_out

.PHONY: install demo test bench clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) run_preprocess.py --runner DirectRunner --output_dir $(DEMO_OUT)/tfrecords

test: install
	$(PY) -m pytest -q tests

clean:
	rm -rf $(DEMO_OUT)
