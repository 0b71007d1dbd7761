# The two Quick-start commands (see README.md). Both set up .venv first (scripts/setup.sh).
SHELL := /bin/bash
VENV ?= .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1

.PHONY: setup repro test bench

setup:
	@bash scripts/setup.sh

repro: setup        ## the whole default pipeline on the real corpus
	dvc repro

test: setup         ## the test suite (what CI runs), one worker per CPU
	python -m pytest -q -n auto --dist worksteal

bench: setup        ## the benchmarks, JSON on the last line of each
	python -m pipeline.bench merge --json
	python -m pipeline.bench xent --json
	python -m pipeline.bench mixfit --json
	python -m pipeline.bench select --json
	python -m pipeline.bench train --json
	python -m pipeline.bench teardown --json
