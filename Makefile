# kmatrix: `make` trains what .config describes. `make help` lists the rest.

PYTHON3 ?= python3
VENV ?= .venv
PY ?= $(VENV)/bin/python
# The torch requirement pip resolves. Plain "torch" gets the CUDA build real
# users want; CI, with no GPU, passes TORCH="torch<2.14" for the CPU-only build.
TORCH ?= torch
KCONFIG_CONFIG ?= .config
export KCONFIG_CONFIG
export srctree := $(CURDIR)

DEFCONFIGS := $(notdir $(wildcard defconfigs/*))
STAMP := $(VENV)/.installed
# Prerequisite of every target that needs the venv; `make INSTALL= PY=python3 ...` skips it.
INSTALL = $(STAMP)
TEST_STAMP := $(VENV)/.installed-test
CONFIGTOOL := $(PY) -m lib.configtool
# The pyproject extras .config selects ([hub], [slurm], [trackers]: lib/extras.py), installed
# into the venv on first use; without make's venv (INSTALL=) a missing one is an error naming it.
EXTRAS = $(if $(INSTALL),@$(CONFIGTOOL) extras --install --torch "$(TORCH)")
# Where `make savedefconfig` writes the minimal config.
SAVEDEFCONFIG ?= defconfig

.DEFAULT_GOAL := all
.PHONY: all train data sample test bench estimate help clean mrproper menuconfig olddefconfig \
	savedefconfig listnewconfig setconfig checkconfig defconfig $(addprefix defconfig-,$(DEFCONFIGS))

# The default goal runs what .config describes: one training run, or with MATRIX=y the matrix.
all: $(INSTALL) $(KCONFIG_CONFIG)
	$(EXTRAS)
	$(PY) -m scripts.run $(KCONFIG_CONFIG)

$(STAMP): pyproject.toml
	$(PYTHON3) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet "$(TORCH)" -e .
	touch $@

$(TEST_STAMP): $(STAMP)
	$(VENV)/bin/pip install --quiet "$(TORCH)" -e ".[test]"
	touch $@

# Only the default .config is created on demand; a named config that does not exist is an
# error (configtool check says so), never a silent copy of the default recipe.
$(KCONFIG_CONFIG): | $(INSTALL)
ifeq ($(KCONFIG_CONFIG),.config)
	$(CONFIGTOOL) defconfig defconfigs/default
else
	@$(CONFIGTOOL) check
endif

train: $(INSTALL) $(KCONFIG_CONFIG)
	$(EXTRAS)
	$(PY) -m gpt2.train $(KCONFIG_CONFIG)

data: $(INSTALL) $(KCONFIG_CONFIG)
	$(EXTRAS)
	$(PY) -m gpt2.data $(KCONFIG_CONFIG)

# Read every prepared shard: size, sha256 and token ids against meta.json.
.PHONY: data-verify
data-verify: $(INSTALL) $(KCONFIG_CONFIG)
	$(PY) -m gpt2.data --verify $(KCONFIG_CONFIG)

sample: $(INSTALL) $(KCONFIG_CONFIG)
	$(PY) -m gpt2.sample $(KCONFIG_CONFIG)

test: $(TEST_STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The test matrix (scripts/Kconfig): DRY_RUN=1 lists the cells, RETRY_FAILED=1 reruns failed
# ones; `make report` reports on .config's matrix, or MATRIX=<dir>, against BASELINE_MATRIX=<dir>;
# MATRICES="<dir> <dir> ..." reports on several workloads and draws their performance profiles.
.PHONY: test-matrix report
test-matrix: $(INSTALL) $(KCONFIG_CONFIG)
	$(EXTRAS)
	$(PY) -m scripts.matrix $(KCONFIG_CONFIG) $(if $(filter 1,$(DRY_RUN)),--dry-run) $(if $(filter 1,$(RETRY_FAILED)),--retry-failed)

report: $(INSTALL)
	$(PY) -m scripts.report $(or $(MATRICES),$(MATRIX),$(KCONFIG_CONFIG)) $(if $(BASELINE_MATRIX),--baseline-matrix $(BASELINE_MATRIX))

# A one-node Slurm on this machine (root; Debian's slurm and mariadb packages), state under
# $KMATRIX_SLURM_DIR (/var/tmp/kmatrix-slurm): for MATRIX_EXECUTOR=slurm on a laptop and the tests.
.PHONY: slurm-local slurm-local-stop
slurm-local:
	scripts/slurm_local.sh start

slurm-local-stop:
	scripts/slurm_local.sh stop

# `make bench` runs the fixed list for this device (benchmarks/cpu or benchmarks/gpu) in interleaved rounds;
# BENCH=current times .config instead, COMPARE=<results/bench/...> puts an earlier run beside, BENCH_ARGS="--rounds 5".
bench: $(INSTALL) $(KCONFIG_CONFIG)
	$(PY) -m scripts.bench $(KCONFIG_CONFIG) $(if $(BENCH),--list $(BENCH)) $(if $(COMPARE),--compare $(COMPARE)) $(BENCH_ARGS)

estimate: $(INSTALL) $(KCONFIG_CONFIG)
	$(PY) -m scripts.estimate $(KCONFIG_CONFIG)

# The GPU check: run once on a CUDA machine after cloning (GPU_CHECK_ARGS="--rows a,b" or --list).
.PHONY: gpu-check
gpu-check: $(INSTALL)
	$(PY) -m scripts.gpu_check $(GPU_CHECK_ARGS)

# Data preparation speed and memory on a generated local corpus (BENCH_DATA_ARGS="--mb 50").
.PHONY: bench-data
bench-data: $(INSTALL)
	$(PY) -m scripts.bench_data $(BENCH_DATA_ARGS)

# The matrix's switches (MATRIX_OPTIMIZER_*, MATRIX_PRUNING_*, MATRIX_VARIANT_*), one per registry
# entry: rerun after adding an optimizer or a pruning method, and commit the file.
.PHONY: matrix-kconfig
matrix-kconfig: $(INSTALL)
	$(PY) -m scripts.matrix_kconfig

defconfig: defconfig-default

$(addprefix defconfig-,$(DEFCONFIGS)): defconfig-%: $(INSTALL)
	$(CONFIGTOOL) defconfig defconfigs/$*

# Any other defconfig-<name>: configtool names the nearest defconfigs and lists them all.
defconfig-%: $(INSTALL)
	@$(CONFIGTOOL) defconfig defconfigs/$*

menuconfig: $(INSTALL)
	$(CONFIGTOOL) menuconfig

olddefconfig listnewconfig: $(INSTALL)
	$(CONFIGTOOL) $@

savedefconfig: $(INSTALL)
	$(CONFIGTOOL) savedefconfig $(SAVEDEFCONFIG)

checkconfig: $(INSTALL)
	$(CONFIGTOOL) check

# SET reaches configtool through the environment, unexpanded ($(value)), never through
# a shell command line: configtool splits it as a shell splits words (quotes and
# backslashes group) and nothing in it is expanded or executed.
setconfig: export KMATRIX_SET = $(value SET)
setconfig: $(INSTALL)
	$(CONFIGTOOL) setconfig --env KMATRIX_SET

help:
	@echo 'Training:'
	@echo '  all (default)     - set up .venv, write .config from defconfigs/default if missing, prepare data,'
	@echo '                      train (or, with MATRIX=y, run the test matrix)'
	@echo '  train             - train what .config describes (resumes an interrupted run)'
	@echo '  data              - prepare the dataset .config selects'
	@echo '  data-verify       - check every prepared shard of .config against its sha256 and size in meta.json'
	@echo '  sample            - generate text from the run of .config'
	@echo '  test-matrix       - run every cell of the matrix .config describes, then report (DRY_RUN=1, RETRY_FAILED=1)'
	@echo '  report            - rewrite the matrix report (MATRIX=<dir or config>, BASELINE_MATRIX=<dir>, MATRICES="a b")'
	@echo 'Configuration:'
	@echo '  menuconfig        - edit .config in the terminal UI'
	@echo '  defconfig-<name>  - write .config from defconfigs/<name> (defconfig = defconfig-default)'
	@echo '  olddefconfig      - update .config to the current Kconfig tree, new symbols at defaults'
	@echo '  savedefconfig     - write the minimal config of .config to ./defconfig'
	@echo '  listnewconfig     - list symbols .config does not set yet'
	@echo '  setconfig SET="A=1 B=2" - change symbols in .config (every value must take; quote a'
	@echo '                      value with spaces as a shell would: SET='"'"'L="0.5 0.7"'"'"')'
	@echo '  checkconfig       - validate .config'
	@echo 'Development:'
	@echo '  slurm-local       - start a one-node Slurm with accounting on this machine (root; apt packages)'
	@echo '  slurm-local-stop  - stop it'
	@echo '  test              - run the test suite'
	@echo '  estimate          - print what .config will cost: parameters, memory, tokens, FLOPs, time'
	@echo '  bench             - the benchmark list of this device (BENCH=current: .config; COMPARE=<dir>; BENCH_ARGS="--rounds N")'
	@echo '  gpu-check         - once on a CUDA machine: precisions, compile, attention, optimizers, pruning,'
	@echo '                      memory, MFU, DDP; table in results/gpu-check/report.md (GPU_CHECK_ARGS=--list)'
	@echo '  matrix-kconfig    - regenerate scripts/Kconfig.matrix-generated from the optimizer and pruning registries'
	@echo '  bench-data        - time data preparation against a one-process tiktoken loop (BENCH_DATA_ARGS=...)'
	@echo '  clean             - remove build leftovers (caches, egg-info)'
	@echo '  mrproper          - clean, and remove .config, .config.old and .venv'
	@echo 'Variables: TORCH="torch<2.14" (torch requirement), KCONFIG_CONFIG=<file>, PYTEST_ARGS=...'
	@echo 'Defconfigs:'
	@for f in $(DEFCONFIGS); do printf '  defconfig-%-26s - %s\n' "$$f" "$$(sed -n '1s/^# *//p' defconfigs/$$f)"; done

clean:
	rm -rf build *.egg-info .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

mrproper: clean
	rm -rf $(KCONFIG_CONFIG) $(KCONFIG_CONFIG).old $(SAVEDEFCONFIG) $(VENV)
