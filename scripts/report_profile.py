"""Performance profiles over several matrices (workloads), AlgoPerf style: for each
setting, the fraction of workloads on which its time to target (median over seeds,
compile excluded; not reached: never) is within a factor tau of the fastest setting's."""
import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd

from lib.fsutil import atomic_write_text
from scripts import report_md as md
from scripts import report_plots as plots_
from scripts import stats
from scripts.report_plots import label

TAUS = np.round(np.exp(np.linspace(0.0, math.log(4.0), 41)), 6).tolist()  # 1 to 4


def workload_names(dirs: list) -> list:
    """Each matrix's directory name, or its whole path where two names are the same."""
    names = [Path(d).name for d in dirs]
    return names if len(set(names)) == len(names) else [str(d) for d in dirs]


def workload_times(outs: list, dirs: list) -> dict:
    """{workload: {setting: median seconds to target (inf: not reached by most seeds)}}."""
    times = {}
    for name, out in zip(workload_names(dirs), outs):
        table = out["target"]["table"]
        times[name] = {label(g.group, g.target_sparsity):
                               g.median_seconds_all for g in table.itertuples()}
    return times


def profile_dir(dirs: list) -> Path:
    names = "\n".join(sorted(str(Path(d).resolve()) for d in dirs))
    return Path(dirs[0]).parent / f"profile-{hashlib.sha256(names.encode()).hexdigest()[:8]}"


def _markdown(dirs, times, profile) -> list:
    lines = ["# Performance profiles", "",
             "Workloads: " + ", ".join(f"`{w}`" for w in times) + ". Each workload's "
             "target is its own MATRIX_TARGET_VAL_LOSS (see its report). Time: median seconds "
             "to target over seeds, compilation excluded; \"not reached\" when most seeds did "
             "not reach it. A setting's profile at tau is the fraction of workloads on which "
             "its time is within tau times the fastest setting's.", ""]
    settings = sorted({s for per in times.values() for s in per})
    lines += md.md_table(["setting"] + list(times),
                         [[s] + [_seconds(per.get(s)) for per in times.values()]
                          for s in settings])
    marks = [1.0, 1.25, 1.5, 2.0, 4.0]
    idx = [min(range(len(TAUS)), key=lambda i: abs(TAUS[i] - t)) for t in marks]
    lines += md.md_table(["setting"] + [f"tau={t:g}" for t in marks],
                         [[s] + [f"{profile[s][i]:.2f}" for i in idx] for s in settings])
    return lines + ["![performance profile](performance_profile.png)", ""]


def _seconds(t) -> str:
    if t is None:
        return "-"
    return "not reached" if not math.isfinite(t) else f"{t:,.1f}"


def write_profiles(dirs: list, outs: list) -> dict:
    """profile.md, profile.csv (profile per tau) and performance_profile.png in
    profile_dir(dirs); returns their paths."""
    times = workload_times(outs, dirs)
    profile = stats.performance_profile(times, TAUS)
    where = profile_dir(dirs)
    where.mkdir(parents=True, exist_ok=True)
    out = {"report": where / "profile.md", "summary": where / "profile.csv",
           "plot": where / "performance_profile.png", "times": times, "profile": profile}
    plots_.plot_profiles(TAUS, profile, out["plot"])
    atomic_write_text(out["summary"], pd.DataFrame(profile, index=pd.Index(TAUS, name="tau"))
                      .to_csv())
    atomic_write_text(out["report"], "\n".join(_markdown(dirs, times, profile)))
    return out
