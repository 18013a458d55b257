# Set-up and the two jobs the README names. Everything installs into .venv/ in this folder.
PY := .venv/bin/python
PIP := .venv/bin/pip
# torch and torchvision are pinned to builds that install offline on the project's machines;
# pyproject.toml keeps ranges any CUDA machine can satisfy.
TORCH := torch==2.14.1 torchvision==0.29.1

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[test]"
	touch $@

install: .venv/.installed

demo: install
	rm -rf out/sample_data
	.venv/bin/pyramid sample-data out/sample_data
	.venv/bin/pyramid inspect out/sample_data/lerobot
	.venv/bin/pyramid inspect out/sample_data/videos

test: install
	$(PY) -m pytest -q --timeout 900 tests

.PHONY: install demo test
