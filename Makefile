# The two commands of the README: `make demo` and `make test`. Each creates or
# refreshes the local virtualenv (.venv) from setup.cfg first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/msm demo

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile tests   # two workers (CI has 2 cores); one file per worker at a time

clean:
	rm -rf $(VENV) build *.egg-info
