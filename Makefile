# Every target sets itself up from nothing (idempotent; a second run takes seconds).
SHELL := /bin/bash
PY := .venv/bin/python
COMFY := .host/ComfyUI

.PHONY: setup models demo test test-hosts test-core test-host test-web serve bench bench-gpu bench-few-step bench-forecast bench-tokens bench-drift bench-step-cost bench-quick bench-deep bench-load bench-faults bench-peers results-age clean

setup:
	bash scripts/setup_host.sh

models: setup
	$(PY) scripts/make_tiny_models.py --comfy $(COMFY)

# Real ComfyUI, headless, runs the digits example workflows with and without ProCache, prints the table and
# writes demo_output/demo.png (the bundled trained models need no model building).
demo: setup
	$(PY) scripts/run_demo.py

# The host-independent tests (tests/core), then the host share on every ComfyUI release: the newest one runs
# every real-server and headless-browser test, the older ones (0.3.75 here, and every other release in HOSTS,
# default ../shared/hosts: a folder of release tarballs or trees) the matrix share, each in its own venv
# (scripts/test_hosts.sh; README "Tested hosts"). Without other hosts 0.3.75 is the newest and runs them all.
HOSTS ?=
test: setup
	bash scripts/setup_browser.sh
	bash scripts/setup_hosts.sh $(HOSTS)
	rc=0; start=$$SECONDS; $(PY) -m pytest tests/core -q -p no:cacheprovider || rc=$$?; \
	echo "[procache] tests/core: rc=$$rc in $$((SECONDS - start)) s"; \
	bash scripts/test_hosts.sh --with-base || rc=$$?; exit $$rc

test-hosts: setup
	bash scripts/setup_hosts.sh $(HOSTS)
	bash scripts/test_hosts.sh

test-core: setup
	$(PY) -m pytest tests/core -q

test-host: models
	$(PY) -m pytest tests/host -q

test-web: setup
	bash scripts/setup_browser.sh
	$(PY) -m pytest tests/web -q

# Real UI with the pack loaded, on http://127.0.0.1:8188
serve: models
	cd $(COMFY) && ../../$(PY) main.py --cpu --listen 127.0.0.1 --port 8188

# on a CUDA machine also the GPU-only code paths (benchmarks/gpu_checks.py, 2-3 minutes; without CUDA it says so)
bench: models
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.gpu_checks

# 4- and 8-step runs of the digits models in the real server, default few-step presets vs full compute (~5 min)
# The GPU figures on a CUDA machine whose python3 has torch, also one with no package index (a lent GPU
# machine: OFFLINE=<folder of wheels and host tarballs>, scripts/gpu_bench.sh says what it holds); results in
# benchmarks/results/gpu/ (about 8 minutes on one H200)
bench-gpu:
	bash scripts/gpu_bench.sh $(if $(OFFLINE),--offline $(OFFLINE))

bench-few-step: models
	nice -n 10 $(PY) -m benchmarks.few_step

# forecast against copy, and the selective steps' token picks, on the trained digits models in the real server (~2 min each)
bench-forecast: models
	nice -n 10 $(PY) -m benchmarks.forecast

bench-tokens: models
	nice -n 10 $(PY) -m benchmarks.token_picks

bench-drift: models
	nice -n 10 $(PY) -m benchmarks.drift_guard

# what one full / reused / selective / forecast reused evaluation costs as a share of a full step, digits Flux
# and PixArt in process on ComfyUI 0.3.75, against the FLOPs ideal (~5 min; benchmarks/results/step_cost_cpu.md)
bench-step-cost: models
	nice -n 10 $(PY) -m benchmarks.step_cost

# every committed results table at this checkout's commit, one generator after another (benchmarks/regenerate.py;
# `$(PY) -m benchmarks.regenerate --list` says what each writes; hours on 2 cores): ONLY=a,b or SKIP=deep,selective
# to run part of it. Only the peers table needs its own command (bench-peers, with the peer checkouts).
ONLY ?=
SKIP ?=
bench-quick: models
	$(PY) -m benchmarks.regenerate $(if $(ONLY),--only $(ONLY)) $(if $(SKIP),--skip $(SKIP))

# the 28-block architectures on a CPU (about 40 minutes: DiT and PixArt-α as two single-thread processes)
bench-deep: models
	$(PY) -m benchmarks.run --deep --deep-cases dit --device cpu --threads 1 & \
	$(PY) -m benchmarks.run --deep --deep-cases pixart --device cpu --threads 1; wait
	$(PY) -m benchmarks.run --report-only --quick --device cpu

# UI traffic during a sampling run on the real server (loopback; about 15 minutes on 2 shared cores)
bench-load: models
	$(PY) -m benchmarks.load

# faults injected through the real server, counted in benchmarks/results/faults_cpu.md
bench-faults: models
	$(PY) -m benchmarks.faults

# ProCache beside TeaCache, First Block Cache and MagCache (checkouts in PEERS=<folder>, missing ones skipped)
# on the trained digits models, one real server with its own custom-nodes folder; the peers' missing
# requirements go into .host/peer-deps (pip --target), never into the venv. About 10 minutes on 2 cores.
bench-peers: models
	nice -n 10 $(PY) -m benchmarks.peers --peers "$(PEERS)"

# which commit each committed results section was made at, and how many engine/node commits landed since
results-age:
	$(PY) scripts/results_age.py

clean:
	rm -rf .host .venv demo_output tests/artifacts
