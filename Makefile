# `make demo`: set up .venv and run the toolkit end to end on the demo corpus shipped in the repo.
# `make test`: set up .venv if needed and run the test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_OUT := demo_out
DEMO_STEPS ?= 300
# `make fixtures`: a local checkout of the original (github.com/jik876/hifi-gan) and a Python with torch.
# Every fixture records the checkout's commit and torch's version (tools/reference.py, tests/test_fixtures.py).
REFERENCE_REPO ?= ../hifi-gan
TORCH_PYTHON ?= python3

.PHONY: install demo test bench bench-fidelity fixtures clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) run_preprocess.py --runner DirectRunner --config configs/demo.json --output_dir $(DEMO_OUT)/tfrecords
	$(PY) run_train.py --config configs/demo.json --data_dir $(DEMO_OUT)/tfrecords \
		--checkpoint_path $(DEMO_OUT)/checkpoints --training_steps $(DEMO_STEPS) --stdout_interval 25 \
		--summary_interval 25 --checkpoint_interval 100 --validation_interval 100
	$(PY) -m tools.plot_mels --checkpoint_path $(DEMO_OUT)/checkpoints --data_dir $(DEMO_OUT)/tfrecords \
		--output $(DEMO_OUT)/mel_comparison.png
	$(PY) run_inference.py --checkpoint $(DEMO_OUT)/checkpoints --input_wavs_dir demo/wavs \
		--input_filelist filelists/demo_val.txt --output_dir $(DEMO_OUT)/generated

test: install
	$(PY) -m pytest -q -n 2 tests

bench: install
	$(PY) -m benchmarks.bench_preprocess
	$(PY) -m benchmarks.bench_input
	$(PY) -m benchmarks.bench_train
	$(PY) -m benchmarks.bench_inference
	$(PY) -m benchmarks.bench_streaming

# The training-fidelity benchmark runs the original beside ours (a checkout and a Python with torch, as fixtures).
bench-fidelity: install
	$(PY) -m benchmarks.bench_fidelity --reference_repo $(REFERENCE_REPO) --reference_python $(TORCH_PYTHON)

fixtures:
	$(TORCH_PYTHON) -m tools.make_fixtures --reference_repo $(REFERENCE_REPO) --out tests/fixtures
	$(TORCH_PYTHON) -m tools.make_train_step_fixture --reference_repo $(REFERENCE_REPO) --out tests/fixtures
	$(TORCH_PYTHON) -m tools.make_checkpoint_fixtures --reference_repo $(REFERENCE_REPO) --out tests/fixtures

clean:
	rm -rf $(DEMO_OUT)
