"""Tuning: an equal budget of trials per optimizer group, the selection, the confirmations.

Each optimizer's search space is declared beside its knobs in lib/optim/Kconfig, one
<SYMBOL>_SEARCH string per tuned symbol ("LOW HIGH log" or "LOW HIGH linear"; empty: not
tuned), listed by the optimizer registry (lib.optim.OPTIMIZERS[...].search). The trials of
every group are the same points of a scrambled Halton sequence (scipy.stats.qmc) seeded by
MATRIX_TUNING_SEED, mapped onto the group's ranges: the same draw on every machine. With
MATRIX_LR_MULTIPLIERS listing several multipliers, they are the trials instead.

The runner (scripts.tuning_runner) runs the trials, writes the selection to
<matrix>/tuning.json and runs the confirmations; scripts.tuning_report lays tuning.json out
for the report."""
import math
from dataclasses import dataclass, replace

from scipy.stats import qmc

from lib import optim
from lib.config import ConfigError

SCALES = ("log", "linear")
EDGE_SHARE = 0.1  # the outer tenth of a range (in log space for a log range) is its edge


@dataclass(frozen=True)
class Range:
    symbol: str  # the tuned symbol, e.g. ADAMW_LR
    low: float
    high: float
    scale: str

    def value(self, u: float) -> float:
        """The point u in [0, 1) of the range, to 4 significant digits."""
        if self.scale == "log":
            x = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            x = self.low + u * (self.high - self.low)
        return min(self.high, max(self.low, float(f"{x:.4g}")))

    def position(self, x: float) -> float:
        """Where x lies in the range, 0 at LOW and 1 at HIGH (in log space for log)."""
        if self.scale == "log":
            return (math.log(x) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (x - self.low) / (self.high - self.low)


def parse_range(search_symbol: str, text: str):
    """A Range from a <SYMBOL>_SEARCH value, None when it is empty."""
    words = (text or "").split()
    if not words:
        return None
    usage = (f"CONFIG_{search_symbol}=\"{text}\": expected \"LOW HIGH log\" or \"LOW HIGH "
             f"linear\" with LOW < HIGH (both > 0 for log), e.g. \"1e-4 1e-2 log\"")
    try:
        low, high, scale = float(words[0]), float(words[1]), words[2]
    except (IndexError, ValueError):
        raise ConfigError(usage) from None
    if len(words) != 3 or scale not in SCALES or not low < high or (scale == "log" and low <= 0):
        raise ConfigError(usage)
    return Range(search_symbol.removesuffix("_SEARCH"), low, high, scale)


def search_space(cfg, optimizer: str) -> list:
    """The Ranges an optimizer's trials draw from, in the registry's order."""
    ranges = [parse_range(s, cfg.get(s)) for s in optim.OPTIMIZERS[optimizer].search]
    ranges = [r for r in ranges if r is not None]
    if not ranges:
        raise ConfigError(f"MATRIX_TUNING_TRIALS={cfg.MATRIX_TUNING_TRIALS}: {optimizer} has "
                          f"no search range; set {optim.OPTIMIZERS[optimizer].search[0]}")
    return ranges


def unit_points(n: int, dims: int, seed: int):
    """n points of the scrambled Halton sequence in [0, 1)^dims."""
    return qmc.Halton(d=dims, scramble=True, rng=seed).random(n)


def draw(cfg, optimizer: str) -> list:
    """[{symbol: value}] of the optimizer's MATRIX_TUNING_TRIALS trials."""
    ranges = search_space(cfg, optimizer)
    points = unit_points(cfg.MATRIX_TUNING_TRIALS, len(ranges), cfg.MATRIX_TUNING_SEED)
    return [{r.symbol: r.value(u) for r, u in zip(ranges, point)} for point in points]


def grid(cfg, optimizer: str) -> list:
    """[{symbol: value}] of the MATRIX_LR_MULTIPLIERS grid, the trials' simple form."""
    multipliers = cfg.MATRIX_LR_MULTIPLIERS
    if len(multipliers) != cfg.MATRIX_TUNING_TRIALS:
        raise ConfigError(f"MATRIX_TUNING_TRIALS={cfg.MATRIX_TUNING_TRIALS} with "
                          f"MATRIX_LR_MULTIPLIERS=\"{' '.join(f'{m:g}' for m in multipliers)}\": "
                          f"the multipliers are the trials, so their counts must agree; set "
                          f"MATRIX_TUNING_TRIALS={len(multipliers)}, or MATRIX_LR_MULTIPLIERS=1 "
                          f"to draw from the search ranges")
    symbol = optim.OPTIMIZERS[optimizer].lr
    return [{symbol: float(f"{cfg[symbol] * m:.6g}")} for m in multipliers]


def is_grid(cfg) -> bool:
    return len(cfg.MATRIX_LR_MULTIPLIERS or ()) > 1


def trial_specs(cfg, grid_cells: list) -> list:
    """Every group of the grid (a CellSpec per optimizer x method x sparsity x extra value)
    as MATRIX_TUNING_TRIALS trial specs at SEED, in group order."""
    groups = {}
    for spec in grid_cells:
        base = replace(spec, seed=cfg.SEED, lr_multiplier=1.0, lr_setting=None)
        groups.setdefault(base.group, base)
    specs = []
    for base in groups.values():
        values = grid(cfg, base.optimizer) if is_grid(cfg) else draw(cfg, base.optimizer)
        multipliers = cfg.MATRIX_LR_MULTIPLIERS if is_grid(cfg) else [1.0] * len(values)
        if base.extra_symbol in values[0]:
            raise ConfigError(f"MATRIX_EXTRA_SYMBOL={base.extra_symbol}: tuning draws it "
                              f"({base.extra_symbol}_SEARCH); sweep another symbol or empty "
                              f"{base.extra_symbol}_SEARCH")
        for i, (point, m) in enumerate(zip(values, multipliers)):
            settings = tuple(f"{k}={v:g}" for k, v in point.items())
            specs.append(replace(base, role="trial", trial=i, settings=settings,
                                 lr_multiplier=m))
    return specs


def confirmation_seeds(cfg) -> list:
    """MATRIX_SEEDS fresh seeds after the trials' SEED, the same for every group."""
    return [cfg.SEED + 1 + i for i in range(cfg.MATRIX_SEEDS)]


def confirm_specs(cfg, selected: list) -> list:
    """The confirmation specs of the selected trial specs: each at every confirmation seed."""
    return [replace(spec, role="confirm", seed=seed)
            for spec in selected for seed in confirmation_seeds(cfg)]


def values_of(spec) -> dict:
    """{symbol: value} tuning set in a spec."""
    return {k: float(v) for k, v in (s.split("=", 1) for s in spec.settings)}


def edge_flags(cfg, spec) -> list:
    """Why the selected trial's values sit at an edge of its search (empty: none)."""
    if is_grid(cfg):
        multipliers = sorted(cfg.MATRIX_LR_MULTIPLIERS)
        where = {multipliers[0]: "lower", multipliers[-1]: "upper"}.get(spec.lr_multiplier)
        return [f"best LR at the {where} edge of MATRIX_LR_MULTIPLIERS (x{spec.lr_multiplier:g}): "
                f"widen the grid"] if where else []
    flags = []
    for r in search_space(cfg, spec.optimizer):
        u = r.position(values_of(spec)[r.symbol])
        where = "lower" if u < EDGE_SHARE else "upper" if u > 1 - EDGE_SHARE else None
        if where:
            flags.append(f"best {r.symbol} at the {where} edge of {r.symbol}_SEARCH "
                         f"({values_of(spec)[r.symbol]:g} in {r.low:g}..{r.high:g}, "
                         f"{r.scale}): widen the range")
    return flags


def select(trials: list, val_loss: dict):
    """The trial with the lowest final validation loss among those that finished (ties: the
    earlier trial), or None when none did."""
    finished = [t for t in trials if val_loss.get(t) is not None and math.isfinite(val_loss[t])]
    return min(finished, key=lambda t: (val_loss[t], trials.index(t)), default=None)
