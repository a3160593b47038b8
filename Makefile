# The book's two commands (see README.md): `make book` and `make test`. `make lab` opens JupyterLab.
# Every target first builds the virtual environment in $(VENV); nothing else is needed on the machine
# but python3 (3.10 or newer) and access to the package registries.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU build of torch where there is no GPU; the PyTorch CPU index is the fallback on machines
# whose pip cannot find the +cpu wheel itself.
TORCH_CPU ?= torch==2.13.0+cpu
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# The notebooks are executed with this many threads, as on the 2-core machine the budgets are set for.
export OMP_NUM_THREADS ?= 2
export HF_HUB_OFFLINE ?= 1
export PYTHONHASHSEED = 0

COLAB_VENV ?= .venv-colab
COLAB_STAMP := $(COLAB_VENV)/.installed

.PHONY: book test test-colab browser-test notebooks lab clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@if $(PY) -c "import torch" 2>/dev/null; then echo "torch already installed"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install --quiet "torch>=2.4"; \
	else $(PY) -m pip install --quiet "$(TORCH_CPU)" || \
	     $(PY) -m pip install --quiet "torch==2.13.0" --index-url "$(TORCH_CPU_INDEX)"; fi
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (pidutils)"
	touch $@

# Renders the outputs committed with each chapter (executes nothing; `make test` checks them).
book: $(STAMP)
	$(VENV)/bin/jupyter-book clean .
	$(VENV)/bin/jupyter-book build . --all

# Re-executes every chapter in place, top to bottom, saving outputs and widget state: run it after
# changing a chapter or pidutils, then commit the notebooks.
notebooks: $(STAMP)
	$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=600 \
		notebooks/*.ipynb

test: $(STAMP)
	$(PY) -m pytest tests --ignore=tests/browser
	$(PY) -m pytest --nbval notebooks --nbval-sanitize-with tests/sanitize.cfg -p no:cacheprovider

# The Colab test environment (requirements-colab.txt): Colab's versions, with ipywidgets 7.7.1.
$(COLAB_STAMP): requirements-colab.txt pyproject.toml
	$(PYTHON) -m venv $(COLAB_VENV)
	$(COLAB_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(COLAB_VENV)/bin/python -m pip install --quiet "$(TORCH_CPU)" || \
	    $(COLAB_VENV)/bin/python -m pip install --quiet "torch==2.13.0" --index-url "$(TORCH_CPU_INDEX)"
	$(COLAB_VENV)/bin/python -m pip install --quiet -r requirements-colab.txt -e .
	$(COLAB_VENV)/bin/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (Colab versions)"
	touch $@

# The widget tests and nbval on every chapter, with Colab's versions, on one thread: `make test` runs
# the chapters on $(OMP_NUM_THREADS) threads, so the two passes catch output that depends on the thread count.
test-colab: $(COLAB_STAMP)
	$(COLAB_VENV)/bin/python -m pytest tests/test_widgets.py tests/test_colab.py
	OMP_NUM_THREADS=1 $(COLAB_VENV)/bin/python -m pytest --nbval notebooks --nbval-sanitize-with tests/sanitize.cfg -p no:cacheprovider

# The rendered book in headless Chromium with no network (after `make book`): figures, sliders, live
# plots, math; screenshots in _build/screenshots. Needs Debian's chromium (apt-get install chromium).
browser-test: $(STAMP)
	$(PY) -m pip install --quiet -r tests/browser/requirements.txt
	$(PY) -m pytest tests/browser

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks

clean:
	rm -rf _build $(VENV) $(COLAB_VENV)
