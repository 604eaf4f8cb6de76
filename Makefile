# `make demo`: set up, then run the main job. `make test`: set up, then run the tests.
.PHONY: setup demo test bench

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/retinanet predict ../shared/datasets/coco128/train2017/000000000009.jpg

test: setup
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python bench/speed.py
