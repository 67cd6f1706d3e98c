"""Markdown pieces of the report: number formats, tables (DataFrame.to_markdown, through
tabulate) and the one set of labels for parameter counts."""
import math

import pandas as pd

NA = "n/a"
# Every parameter count the report prints, under the one label it has everywhere.
PARAM_LABELS = {"param_count": "parameters (total, embeddings included)",
                "param_count_non_embedding": "parameters (excluding embeddings)",
                "trainable_params": "parameters (trainable)"}


def fmt(x, digits=3) -> str:
    if x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def fmt_or_na(x, digits=3) -> str:
    """A field older run directories lack: "n/a" where absent."""
    text = fmt(x, digits)
    return NA if text == "-" else text


def fmt_lr(x) -> str:
    return "-" if x is None or pd.isna(x) else f"{x:g}"


def fmt_p(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "-"
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def md_table(header, rows) -> list:
    """A markdown table of already formatted cells (tabulate parses no numbers)."""
    cells = [[str(c).replace("|", "\\|") for c in row] for row in rows]
    table = pd.DataFrame(cells, columns=list(header), dtype=object)
    return table.to_markdown(index=False, tablefmt="pipe", disable_numparse=True).split("\n") + [""]


def mean_sd(g, digits=3) -> str:
    """mean ± sd (n=k); one seed: the value alone; no value: n/a."""
    if g is None:
        return "-"
    if not g["n"]:
        return NA
    if g["n"] > 1:
        return f"{g['mean']:.{digits}f} ± {g['std']:.{digits}f} (n={g['n']})"
    return f"{g['mean']:.{digits}f}"


def spread(m: dict, digits=1) -> str:
    """A stats.median_spread: "median [low-high]" ("n/a" with no value)."""
    if not m["n"]:
        return NA
    if m["n"] == 1:
        return f"{m['median']:,.{digits}f}"
    return f"{m['median']:,.{digits}f} [{m['low']:,.{digits}f}–{m['high']:,.{digits}f}]"


def ratio(r: dict, above="higher", below="lower") -> str:
    """A stats.ratio: "x1.23 [1.10, 1.37] (higher)", the decision in the caller's words."""
    if not r["n"]:
        return NA
    text = f"x{r['ratio']:.3f}"
    if r["n"] >= 2:
        text += f" [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
    words = {"above 1": above, "below 1": below}
    return f"{text} ({words.get(r['decision'], r['decision'])})"


def params(summary: dict) -> str:
    """The parameter counts a summary holds, each under its label."""
    found = [f"{label} {summary[k]:,}" for k, label in PARAM_LABELS.items()
             if summary.get(k) is not None]
    return "; ".join(found) or NA
