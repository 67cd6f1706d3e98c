"""make gpu-check: what a person with a GPU runs once after cloning.

Each row is a small function in ROWS (scripts/gpu_check_rows.py) that returns a Row: pass or
fail with its figure. Rows train through the project's own trainer CLI (python -m gpt2.train
with --set overrides) and read the run directory, so they check the code users run.
The table is printed and written to results/gpu-check/report.md with the device name,
driver, CUDA and torch versions. Without CUDA it prints one line and exits 0.
"""
import argparse
import sys
import tempfile
from pathlib import Path

import torch

from lib.fsutil import atomic_write_text
from scripts import gpu_check_rows
from scripts.gpu_check_rows import Row
from scripts.report_md import md_table

REPORT = Path("results") / "gpu-check" / "report.md"
NO_CUDA = "gpu-check: no CUDA device here (torch.cuda.is_available() is False); nothing run"


def registry() -> dict:
    """{row name: function(workdir: Path) -> Row}, in the order they run."""
    return gpu_check_rows.ROWS


def device_facts() -> dict:
    """Device name, driver, CUDA and torch versions (the report's header)."""
    facts = {"torch": torch.__version__, "cuda": torch.version.cuda or "none",
             "device": "none", "driver": "unknown", "gpus": 0}
    if torch.cuda.is_available():
        facts["gpus"] = torch.cuda.device_count()
        facts["device"] = torch.cuda.get_device_name(0)
        try:
            import pynvml  # noqa: PLC0415 (optional; ships with nvidia-ml-py)
            pynvml.nvmlInit()
            facts["driver"] = str(pynvml.nvmlSystemGetDriverVersion())
        except Exception:  # noqa: BLE001 - the driver version is informative only
            facts["driver"] = "unknown (nvidia-ml-py not installed)"
    return facts


def format_report(facts: dict, rows: list) -> str:
    """The markdown report: header facts, then one table line per row."""
    passed = sum(r.ok for r in rows)
    lines = ["# gpu-check", "",
             f"- device: {facts['device']} (x{facts['gpus']})",
             f"- driver: {facts['driver']}",
             f"- CUDA: {facts['cuda']}",
             f"- torch: {facts['torch']}",
             f"- passed: {passed} of {len(rows)}", ""]
    lines += md_table(["row", "result", "figure"],
                      [[r.name, "pass" if r.ok else "FAIL", r.figure.replace("\n", " ")]
                       for r in rows])
    return "\n".join(lines)


def run_row(name: str, fn, workdir: Path) -> Row:
    """One row; an exception is a failed row with its reason, never the end of the check."""
    try:
        return fn(workdir)
    except Exception as e:  # noqa: BLE001 - every row reports, whatever breaks
        return Row(name, False, f"error: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")


def parse(argv, names: list):
    parser = argparse.ArgumentParser(prog="make gpu-check", description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the rows and exit")
    parser.add_argument("--rows", default="", metavar="A,B",
                        help="run only these rows (comma-separated names from --list)")
    parser.add_argument("--report", type=Path, default=REPORT, help=f"where to write (default {REPORT})")
    args = parser.parse_args(argv)
    chosen = [n for n in args.rows.split(",") if n] or names
    unknown = [n for n in chosen if n not in names]
    if unknown:
        print(f"error: --rows: no row {unknown[0]!r}; `make gpu-check GPU_CHECK_ARGS=--list` "
              f"lists them", file=sys.stderr)
        return None
    args.chosen = chosen
    return args


def main(argv=None) -> int:
    rows = registry()
    args = parse(argv, list(rows))
    if args is None:
        return 2
    if args.list:
        print("\n".join(rows))
        return 0
    if not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    facts = device_facts()
    results = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for name in args.chosen:
            row = run_row(name, rows[name], Path(tmp) / name)
            print(f"{'pass' if row.ok else 'FAIL'}  {row.name}: {row.figure}", flush=True)
            results.append(row)
    text = format_report(facts, results)
    atomic_write_text(args.report, text)
    print(text + f"\nwritten to {args.report}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
