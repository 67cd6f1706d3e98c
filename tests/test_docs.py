"""Every command in README.md and docs/*.md still works, so that none goes stale.

Each fenced code block is a session a user types: its `make` lines run in order, in a
temporary directory, on one `.config` of their own (`KCONFIG_CONFIG`), with results under
tmp_path. Configuration targets run as written. Work targets run on the block's config made
tiny (the test suite's model, `ESTIMATE_DEVICE` so the estimate measures nothing); a matrix
runs as its dry run. What cannot run here is in NOT_RUN with the reason and runs as
`make -n` (the target exists, its recipe expands); a target in no table fails the test.
Inline `make ...` commands, `defconfig-<name>`s, Kconfig symbols, repository paths and
links between the pages are checked to exist.
"""
import os
import re
import shlex
import subprocess
import sys

import pytest
from conftest import EVENT_LIMIT_S, TINY

from lib import config as cfglib

ROOT = cfglib.ROOT
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MAKEFILE = (ROOT / "Makefile").read_text()
DEFCONFIGS = {p.name for p in (ROOT / "defconfigs").iterdir()}

# Targets that only read or write .config (or print): run exactly as written.
CONFIG_TARGETS = {"defconfig", "setconfig", "olddefconfig", "savedefconfig", "listnewconfig",
                  "checkconfig", "help", "gpu-check"}  # gpu-check: one line, exit 0, without CUDA
# Targets that train or read data: run on the block's config made tiny (the default recipe).
TINY_TARGETS = {"all", "train", "data", "data-verify", "sample"}
# Targets that only estimate: run on any recipe's config with the tiny model.
ESTIMATE_TARGETS = {"estimate"}
# The matrix: its dry run (every cell generated, validated and estimated; nothing trains).
MATRIX_TARGETS = {"test-matrix"}
# Documented targets that cannot run in a test, and why; they run as `make -n`.
NOT_RUN = {
    "menuconfig": "interactive: needs a terminal",
    "test": "runs this very test suite",
    "slurm-local": "needs root and Debian's slurm and mariadb packages (.ci/run starts it)",
    "slurm-local-stop": "stops what slurm-local started (root)",
    "report": "needs a matrix with finished cells; tests/test_report.py runs it on one",
    "bench": "timed rounds of several trainings: minutes; tests/test_bench.py covers it",
    "bench-data": "prepares a generated corpus of tens of MB; tests/test_data.py covers it",
    "clean": "would remove the checkout's caches while the suite runs",
    "mrproper": "would remove the checkout's .venv and .config",
    "matrix-kconfig": "rewrites the checkout's scripts/Kconfig.matrix-generated; "
                      "tests/test_matrix_kconfig.py checks that it is current",
}
# A training target on a full-size recipe (not `default`) is not run either: it is hours.
FULL_SIZE = "a full-size recipe trains for minutes to hours; `make -n` only"
# Training length of the tiny runs.
TINY_RUN = ["MAX_ITERS=10", "EVAL_INTERVAL=5"]
# Dry runs already made, by (config text, arguments): a block that repeats another's (the
# same matrix in README and docs, `make test-matrix` typed twice) does not pay twice.
DONE = set()


def fenced_blocks(page):
    """[(first line number, [make command line, ...])] of every fenced block of `page`."""
    blocks, lines, start = [], None, 0
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if line.startswith("```"):
            if lines is None:
                lines, start = [], number
            else:
                blocks.append((start, lines)) if lines else None
                lines = None
        elif lines is not None and re.match(r"\s*(\$ )?make\b", line):
            lines.append(re.sub(r"^\s*(\$ )?", "", line))
    return blocks


def make_commands(line):
    """The make invocations of one shell line, each a list of words (`&&`, `;` split it)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split, lexer.commenters = True, "#"
    commands, words = [], []
    for word in [*lexer, ";"]:
        if word in (";", "&&", "||", "|", "&"):
            commands.append(words) if words[:1] == ["make"] else None
            words = []
        else:
            words.append(word)
    return commands


def split_args(words):
    """(targets, NAME=VALUE assignments) of one make invocation (words[0] is make)."""
    assigns = [w for w in words[1:] if re.match(r"[A-Za-z_][A-Za-z0-9_]*=", w)]
    targets = [w for w in words[1:] if w not in assigns and not w.startswith("-")]
    return targets or ["all"], assigns


def makefile_honours(name):
    """Whether the Makefile reads the variable `name`."""
    return re.search(rf"\$\((value )?{name}\)|^{name}\s*[?:]?=", MAKEFILE, re.M) is not None


def how(target, recipe):
    """How the test runs `target` on a config of `recipe`: a kind and, if not run, why."""
    if target.startswith("defconfig-") or target in CONFIG_TARGETS:
        return "config", None
    if target in MATRIX_TARGETS:
        return "matrix", None
    if target in ESTIMATE_TARGETS:
        return "estimate", None
    if target in TINY_TARGETS:
        return ("tiny", None) if recipe == "default" else ("dry", FULL_SIZE)
    if target in NOT_RUN:
        return "dry", NOT_RUN[target]
    return None, None


def all_commands():
    """[(page, line number of the block, [words of one make invocation])]."""
    return [(page, start, words) for page in PAGES for start, lines in fenced_blocks(page)
            for line in lines for words in make_commands(line)]


def test_every_documented_command_is_run_or_listed():
    assert all_commands(), "no make command found in README.md and docs/"
    for page, start, words in all_commands():
        targets, assigns = split_args(words)
        where = f"{page.relative_to(ROOT)}:{start}: {shlex.join(words)}"
        for target in targets:
            assert how(target, "default")[0], (
                f"{where}: target {target} is neither run by tests/test_docs.py nor listed in "
                f"its NOT_RUN with the reason")
            if target.startswith("defconfig-"):
                assert target[len("defconfig-"):] in DEFCONFIGS, f"{where}: no such defconfig"
        for assign in assigns:
            assert makefile_honours(assign.split("=")[0]), (
                f"{where}: the Makefile reads no {assign}")


class Session:
    """One fenced block: its own .config in `home`, results under `results`."""

    def __init__(self, home, results):
        self.home, self.results = home, results
        self.config = home / ".config"

    def make(self, *args, check=True):
        cmd = ["make", "--no-print-directory", "-C", str(ROOT), *args, "INSTALL=",
               f"PY={sys.executable}", f"KCONFIG_CONFIG={self.config}",
               f"SAVEDEFCONFIG={self.home / 'defconfig'}"]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "KMATRIX_OFFLINE": "1"}
        result = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                timeout=EVENT_LIMIT_S)
        assert not check or result.returncode == 0, (
            f"{shlex.join(args)} exited {result.returncode}:\n{result.stdout[-2000:]}"
            f"\n{result.stderr[-3000:]}")
        return result

    def make_once(self, *args):
        """make, unless a block made the same on the same config (it leaves nothing behind)."""
        key = (self.config.read_text() if self.config.exists() else "", frozenset(args))
        if key not in DONE:
            self.make(*args)
            DONE.add(key)

    def recipe(self):
        return cfglib.load(self.config).RECIPE if self.config.exists() else "default"

    def make_tiny(self, *extra):
        """Rewrite the session's config tiny (as `make` creates .config when missing)."""
        base = self.config if self.config.exists() else ROOT / "defconfigs" / "default"
        kconf = cfglib.load_kconf(base, [*TINY, f"RESULTS_DIR={self.results}",
                                         "ESTIMATE_DEVICE=L4", *extra])
        cfglib.write_config(kconf, self.config)

    def run(self, words):
        targets, assigns = split_args(words)
        kinds = {how(t, self.recipe()) for t in targets}
        assert len(kinds) == 1, f"{shlex.join(words)}: targets of different kinds: {kinds}"
        kind, _ = kinds.pop()
        if kind == "config":
            extra = ["GPU_CHECK_ARGS=--list"] if "gpu-check" in targets and cuda() else []
            return self.make(*words[1:], *extra)
        if kind == "dry":
            return self.make_once("-n", *words[1:])
        if kind == "matrix":
            self.make_tiny()
            return self.make_once(*words[1:], "DRY_RUN=1")
        if kind == "estimate":
            self.make_tiny()
            return self.make_once(*words[1:])
        self.make_tiny(*TINY_RUN)
        return self.make(*words[1:])


def cuda():
    import torch
    return torch.cuda.is_available()


BLOCKS = [(page, start, lines) for page in PAGES for start, lines in fenced_blocks(page)]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Results shared by every block: the tiny run trains once, later blocks find it done."""
    return tmp_path_factory.mktemp("results")


@pytest.mark.parametrize("page,start,lines", BLOCKS,
                         ids=[f"{p.relative_to(ROOT)}:{s}" for p, s, _ in BLOCKS])
def test_documented_block_runs(tmp_path, results, page, start, lines):
    session = Session(tmp_path, results)
    for line in lines:
        for words in make_commands(line):
            session.run(words)


# Upper-case words in backquotes that are not Kconfig symbols nor Makefile variables, and why.
NOT_SYMBOLS = {
    "ADAMW_RL": "the misspelling in the example of a did-you-mean error",
    "NAME": "the placeholder of NAME=VALUE",
    "NOT_RUN": "the table in tests/test_docs.py",
    "ROWS": "the list in scripts/gpu_check_rows.py",
    "CUDA_VISIBLE_DEVICES": "environment", "HF_HOME": "environment",
    "HF_HUB_OFFLINE": "environment", "KMATRIX_OFFLINE": "environment",
    "KMATRIX_SLURM": "environment", "WANDB_MODE": "environment", "TRACKIO_DIR": "environment",
    "EVENT_LIMIT_S": "the limit in tests/conftest.py",
}
# Paths in backquotes that are not files of the checkout, and why.
NOT_IN_CHECKOUT = {"gpt2/encoder.json": "looked up like the data (docs/datasets.md)",
                   "gpt2/vocab.bpe": "looked up like the data (docs/datasets.md)"}


def quoted():
    """(page, text) of every `quoted` span of every page."""
    return [(page, span) for page in PAGES
            for span in re.findall(r"`([^`\n]+)`", page.read_text())]


def test_every_quoted_symbol_is_in_the_kconfig_tree():
    kconf = cfglib.load_tree()
    names = {n for n, s in kconf.syms.items() if s.nodes} | set(kconf.named_choices)
    for page, span in quoted():
        match = re.fullmatch(r"([A-Z][A-Z0-9_]*[A-Z0-9])(\*|_\*|=.*)?", span)
        if not match or match.group(1) in NOT_SYMBOLS or makefile_honours(match.group(1)):
            continue
        name, wildcard = match.group(1), (match.group(2) or "").endswith("*")
        known = any(n.startswith(name) for n in names) if wildcard else name in names
        assert known, f"{page.relative_to(ROOT)}: `{span}`: no such Kconfig symbol"


def test_every_quoted_path_and_defconfig_exists():
    for page, span in quoted():
        where = f"{page.relative_to(ROOT)}: `{span}`"
        if re.fullmatch(r"(gpt2|lib|scripts|tests|benchmarks|defconfigs|docs|\.ci)/[\w./-]*", span):
            assert span in NOT_IN_CHECKOUT or (ROOT / span).exists(), f"{where}: no such path"
    for page in PAGES:
        named = re.findall(r"(?<![\w/])defconfigs?[-/]([a-z0-9][\w.-]*[a-z0-9])", page.read_text())
        for name in named:
            assert name in DEFCONFIGS, f"{page.relative_to(ROOT)}: no defconfig {name}"


def test_every_inline_make_command_names_real_targets_and_variables(tmp_path):
    session = Session(tmp_path, tmp_path / "results")
    for page, span in quoted():
        if not re.match(r"make(\s|$)", span) or "<" in span or "..." in span:
            continue
        for words in make_commands(span):
            targets, assigns = split_args(words)
            for assign in assigns:
                assert makefile_honours(assign.split("=")[0]), f"{page.name}: `{span}`"
            session.make_once("-n", *targets)


def anchors(page):
    """GitHub's anchors of the headings of `page`."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", page.read_text(), re.M)}


def test_every_link_between_the_pages_leads_somewhere():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.relative_to(ROOT)}: link to {target}: no such file"
            assert not anchor or anchor in anchors(linked), (
                f"{page.relative_to(ROOT)}: link to {target}: no such heading")
