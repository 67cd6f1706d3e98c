"""The matrix's cells as configurations: each grid point's own .config, written through
kconfiglib with the every-value-took check, and the matrix directory they live in."""
from dataclasses import dataclass, field
from pathlib import Path

from lib import config as cfglib
from lib import optim
from lib.config import ConfigError
from lib.run import matrix_dir, results_setting
from scripts.matrix_grid import CellSpec, enumerate_cells


@dataclass(frozen=True)
class Cell:
    spec: CellSpec
    id: str
    hash: str
    text: str        # the cell's full .config
    dir: Path        # its run directory, <matrix dir>/<id>
    kconf: object = field(default=None, repr=False, compare=False)

    @property
    def config(self) -> Path:
        return self.dir / "config"

    @property
    def log(self) -> Path:
        return self.dir / "stdout.log"

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def learning_rate(self) -> float:
        """The peak learning rate the cell's config gives its optimizer."""
        return float(self.kconf.syms[optim.OPTIMIZERS[self.spec.optimizer].lr].str_value)


@dataclass
class Matrix:
    cfg: object          # the matrix Config
    kconf: object
    path: Path           # results/<RECIPE>-matrix-<hash>
    cells: list
    skipped: list
    config_path: Path = None
    overrides: tuple = ()

    @property
    def state_dir(self) -> Path:
        return self.path / "state"

    def state_path(self, cell) -> Path:
        return self.state_dir / f"{cell.id}.json"


def cell_kconf(config_path, overrides, spec, results, run_name="", project=()):
    # --set values of the matrix's own knobs (the grid, the executor) do not reach a cell,
    # where MATRIX=n drops them.
    kept = [o for o in overrides if not o.partition("=")[0].strip().removeprefix("CONFIG_")
            .startswith(("MATRIX", "SLURM_"))]
    try:
        return cfglib.load_kconf(config_path, [*kept, *spec.overrides(), *project,
                                               f"RESULTS_DIR={results}", f"RUN_NAME={run_name}"])
    except ConfigError as e:
        raise ConfigError(f"cell {spec.name}: {e}") from None


def load_matrix(config_path, overrides=()) -> Matrix:
    """Read the matrix config and resolve every cell's configuration (validated
    like any .config: a cell value that does not take is an error naming it)."""
    kconf = cfglib.load_kconf(config_path, overrides)
    cfg = cfglib.from_kconf(kconf, config_path)
    specs, skipped = enumerate_cells(cfg)
    path = matrix_dir(cfg, kconf)
    m = Matrix(cfg, kconf, path, [], skipped, config_path, tuple(overrides))
    m.cells = make_cells(m, specs)
    return m


def make_cells(m: Matrix, specs) -> list:
    """The Cell of each spec of matrix m, validated like any .config."""
    results = results_setting(m.cfg, m.path.name)
    # The cells of a matrix are one tracker project.
    project = ([f"TRACKER_PROJECT={m.path.name}"]
               if m.cfg.TRACKER != "none" and not m.cfg.TRACKER_PROJECT else [])
    cells = []
    for spec in specs:
        cell_hash = cfglib.config_hash(cell_kconf(m.config_path, m.overrides, spec, results))
        cell_id = f"{spec.name}-{cell_hash}"
        kconf_cell = cell_kconf(m.config_path, m.overrides, spec, results, cell_id, project)
        cells.append(Cell(spec, cell_id, cell_hash, cfglib.config_text(kconf_cell),
                          m.path / cell_id, kconf_cell))
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        raise ConfigError("two cells of the matrix resolve to the same configuration: "
                          + ", ".join(sorted({i for i in ids if ids.count(i) > 1})))
    return cells


def write_cell_config(cell) -> None:
    """<cell dir>/config, the same bytes the trainer writes when it claims the
    directory; an existing one is left alone (the cell id pins its hash)."""
    if cell.config.exists():
        if cell.config.read_text() != cell.text:
            other = cfglib.config_hash(cfglib.load_kconf(cell.config, strict=False))
            if other != cell.hash:
                raise ConfigError(f"{cell.dir} holds a run of a different configuration "
                                  f"(hash {other}, the cell's is {cell.hash})")
        return
    cell.dir.mkdir(parents=True, exist_ok=True)
    cfglib.write_config(cell.kconf, cell.config)  # atomic; no .old, as there is no old one


