# `make demo`: set up, then run the main job. `make test`: set up, then run the tests.
.PHONY: setup demo test bench

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/retinanet train

test: setup
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python bench/speed.py
	.venv/bin/python bench/train_speed.py
	.venv/bin/python bench/inference.py
	.venv/bin/python bench/raccoon.py
