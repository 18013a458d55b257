# Set-up and the two jobs the README names. Everything installs into .venv/ in this folder.
PY := .venv/bin/python
PIP := .venv/bin/pip
# torch and torchvision are pinned to builds that install offline on the project's machines;
# pyproject.toml keeps ranges any CUDA machine can satisfy.
TORCH := torch==2.14.1 torchvision==0.29.1
# PyAV's wheel carries its own FFmpeg and encoders: another release encodes the sample data to other bytes, and the demo's
# figures move with them (probe R^2 0.91 with av 18.1.0, 0.94 with 18.1.1). Pinned to the release on this machine's disk,
# so that a fresh install repeats them whatever PyPI holds that day.
CODECS := av==18.1.0
# LeRobot's own LeRobotDataset opens our LeRobot exports in the tests. Its torch pin clashes with ours, so it goes in
# without its dependencies, beside the few of them its dataset code needs that ours do not bring. Its video decoders
# (torchcodec, or torchvision<0.23's VideoReader) are not among them: tests/lerobot_video.py says how items are read.
LEROBOT := lerobot==0.4.1 datasets==5.2.0 draccus==0.11.6 multiprocess==0.70.19 dill==0.4.1 xxhash==4.1.0

.venv/.installed: pyproject.toml Makefile
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[test]" $(CODECS)
	$(PIP) install -q --no-deps $(LEROBOT)
	touch $@

install: .venv/.installed

# The main job, end to end on sample data: episodes -> tiny latent-action VAE -> labelled pyramid
# (WebDataset + Lance + report) -> latent-action evaluation -> a few trainer steps. (`pyramid export-motus` needs
# Wan's UMT5 text encoder, which is not downloaded, so the demo leaves it out.)
demo: install
	rm -rf out/sample_data out/vae-tiny out/sample_pyramid out/motus_export out/tiny_run
	.venv/bin/pyramid sample-data out/sample_data
	.venv/bin/pyramid inspect out/sample_data/lerobot
	.venv/bin/pyramid train-vae recipes/configs/vae/tiny.yaml
	.venv/bin/pyramid build recipes/configs/build/sample.yaml
	.venv/bin/pyramid eval-latents --vae out/vae-tiny --out out/sample_pyramid/latent_eval out/sample_data/lerobot
	.venv/bin/pyramid train recipes/configs/train/tiny.yaml
	@echo "report: out/sample_pyramid/report.html   latent-action evaluation: out/sample_pyramid/latent_eval/report.html"

test: install
	$(PY) -m pytest -q --timeout 900 tests

.PHONY: install demo test
