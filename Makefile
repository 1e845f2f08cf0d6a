# The two commands of the README. Both build the virtual environment on first use.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.conta-installed
CONFIG  ?= configs/demo.yaml

.PHONY: demo test venv clean-runs

$(STAMP): pyproject.toml scripts/bootstrap.sh
	bash scripts/bootstrap.sh $(VENV) crf,coco,caffe,dev
	@touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m conta run --config $(CONFIG) --with-controls --jobs 3

test: $(STAMP)
	$(PY) -m pytest -q

clean-runs:
	rm -rf runs
