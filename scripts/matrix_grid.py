"""The matrix's grid: which cells (CellSpec) the "Test matrix" settings of a .config
select, and the combinations skipped with the reason. With tuning on (MATRIX_TUNING_TRIALS),
each group's trials (scripts.tuning) replace its grid cells."""
import functools
from dataclasses import dataclass

from lib import config as cfglib
from lib import optim
from lib.config import ConfigError
from lib.fsutil import safe_name
from lib.run import OFF_HINT
from scripts.matrix_kconfig import selected

@functools.lru_cache(maxsize=1)
def state_optimizers() -> tuple:
    """Optimizers AdamWPrune can prune from: those with which the Kconfig tree lets
    PRUNING_STATE be selected (its `depends on` is the one place that says so)."""
    tree = cfglib.load_tree()
    allowed = []
    for member in tree.named_choices["OPTIMIZER"].syms:
        member.set_value("y")
        if tree.syms["PRUNING_STATE"].visibility:
            allowed.append(member.name.removeprefix("OPTIMIZER_").lower().replace("_", "-"))
    return tuple(allowed)


@dataclass(frozen=True)
class CellSpec:
    """One point of the grid, before it has a configuration."""
    optimizer: str
    pruning: str
    variant: str = None
    sparsity: float = None
    seed: int = 0
    lr_multiplier: float = 1.0
    lr_setting: str = None  # NAME=VALUE of the optimizer's LR symbol, when not x1
    extra_symbol: str = None  # MATRIX_EXTRA_SYMBOL and this cell's value of it
    extra_value: str = None
    role: str = None  # "trial" or "confirm" when tuning (scripts.tuning), else None
    trial: int = None  # a trial's index in its group; a confirmation's selected trial
    settings: tuple = ()  # NAME=VALUE of the values tuning drew for it

    @property
    def group(self) -> str:
        """The tuning group it belongs to: the name without trial, rate and seed."""
        return "-".join(self.name_parts())

    @property
    def extra(self) -> str:
        """"SYMBOL=value" of the extra dimension, or None."""
        return f"{self.extra_symbol}={self.extra_value}" if self.extra_symbol else None

    @property
    def method(self) -> str:
        """The pruning column of the report: none, magnitude, state-bitter0, ..."""
        return f"{self.pruning}-{self.variant}" if self.variant else self.pruning

    @property
    def name(self) -> str:
        """The readable part of the cell id: adamw-state-bitter0-s0.5[-lr0.3x]-seed1337."""
        parts = self.name_parts()
        if self.lr_setting:
            parts.append(f"lr{self.lr_multiplier:g}x")
        if self.role:
            parts.append(f"trial{self.trial:02d}" if self.role == "trial" else "tuned")
        return "-".join(parts + [f"seed{self.seed}"])

    def name_parts(self) -> list:
        parts = [self.optimizer, self.method]
        if self.sparsity is not None:
            parts.append(f"s{self.sparsity:g}")
        if self.extra_symbol:
            parts.append(f"{self.extra_symbol.lower()}-{safe_name(self.extra_value)}")
        return parts

    def overrides(self) -> list:
        """NAME=VALUE assignments that turn the matrix config into this cell's."""
        out = ["MATRIX=n", f"OPTIMIZER={self.optimizer}", f"PRUNING={self.pruning}"]
        if self.variant:
            out.append(f"ADAMWPRUNE_VARIANT={self.variant}")
        if self.sparsity is not None:
            out.append(f"TARGET_SPARSITY={self.sparsity:g}")
        if self.lr_setting:
            out.append(self.lr_setting)
        if self.extra_symbol:
            out.append(self.extra)
        return out + list(self.settings) + [f"SEED={self.seed}"]


# Dimensions the grid sweeps itself; the extra dimension may not take them.
OWN_DIMENSIONS = ("OPTIMIZER", "PRUNING", "ADAMWPRUNE_VARIANT", "TARGET_SPARSITY", "SEED",
                  "MATRIX", "RESULTS_DIR", "RUN_NAME")


def extra_dimension(cfg) -> list:
    """[(symbol, value)] of MATRIX_EXTRA_SYMBOL x MATRIX_EXTRA_VALUES, or [(None, None)]."""
    symbol = (cfg.MATRIX_EXTRA_SYMBOL or "").strip().removeprefix("CONFIG_")
    values = (cfg.MATRIX_EXTRA_VALUES or "").split()
    if not symbol and not values:
        return [(None, None)]
    if not symbol:
        raise ConfigError(f"MATRIX_EXTRA_VALUES=\"{cfg.MATRIX_EXTRA_VALUES}\" without "
                          f"MATRIX_EXTRA_SYMBOL: name the symbol the values are for")
    if not values:
        raise ConfigError(f"MATRIX_EXTRA_SYMBOL={symbol} without MATRIX_EXTRA_VALUES: list "
                          f"its values, space-separated")
    lr_symbols = {entry.lr for entry in optim.OPTIMIZERS.values()}
    if symbol in OWN_DIMENSIONS or symbol.startswith("MATRIX_") or symbol in lr_symbols:
        raise ConfigError(f"MATRIX_EXTRA_SYMBOL={symbol}: the matrix sweeps it with its own "
                          f"settings (MATRIX_OPTIMIZER_*, MATRIX_PRUNING_*, MATRIX_SPARSITIES, "
                          f"MATRIX_LR_MULTIPLIERS, MATRIX_SEEDS); choose another symbol")
    if len(set(values)) != len(values):
        raise ConfigError(f"MATRIX_EXTRA_VALUES=\"{cfg.MATRIX_EXTRA_VALUES}\": a value is "
                          f"repeated")
    return [(symbol, v) for v in values]


def enumerate_cells(cfg) -> tuple:
    """(cells, skipped) of a matrix Config: cells a list of CellSpec in run
    order, skipped a list of (combination, reason) for the dry run."""
    if not cfg.MATRIX:
        raise ConfigError(OFF_HINT)
    optimizers = selected(cfg, "OPTIMIZER")
    methods = selected(cfg, "PRUNING")
    variants = selected(cfg, "VARIANT")
    sparsities = cfg.MATRIX_SPARSITIES or ()
    multipliers = cfg.MATRIX_LR_MULTIPLIERS or (1.0,)
    seeds = [cfg.SEED + i for i in range(cfg.MATRIX_SEEDS)]
    extras = extra_dimension(cfg)
    cells, skipped = [], []
    if not optimizers:
        skipped.append(("every cell", "no optimizer selected (MATRIX_OPTIMIZER_*)"))
    if not methods:
        skipped.append(("every cell", "no pruning method selected (MATRIX_PRUNING_*)"))
    if variants and "state" not in methods:
        skipped.append((f"variants {', '.join(variants)}",
                        "no state pruning selected (MATRIX_PRUNING_STATE)"))
    if "state" in methods and not variants:
        skipped.append(("state", "no AdamWPrune variant selected (MATRIX_VARIANT_*)"))
    for optimizer in optimizers:
        lr_symbol = optim.OPTIMIZERS[optimizer].lr
        rates = [(m, None if m == 1 else f"{lr_symbol}={cfg[lr_symbol] * m:.6g}")
                 for m in multipliers]
        for method in methods:
            if method == "none":
                points = [(None, None)]
            elif method == "state":
                if optimizer not in state_optimizers():
                    skipped.append((f"{optimizer}-state",
                                    f"state pruning prunes from Adam moments; {optimizer} has "
                                    f"none (only {', '.join(state_optimizers())})"))
                    continue
                points = [(v, s) for v in variants for s in sparsities]
            else:
                points = [(None, s) for s in sparsities]
            for variant, sparsity in points:
                for multiplier, lr_setting in rates:
                    for symbol, value in extras:
                        for seed in seeds:
                            cells.append(CellSpec(optimizer, method, variant, sparsity, seed,
                                                  multiplier, lr_setting, symbol, value))
    if cfg.MATRIX_TUNING_TRIALS:  # the trials of each group replace its grid cells
        from scripts import tuning
        cells = tuning.trial_specs(cfg, cells)
    return cells, skipped
