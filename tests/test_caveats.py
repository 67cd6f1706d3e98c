"""The report's caveats: every cell that did not get what its label says is flagged."""
import json
import math

import pytest

from lib.run import dir_of_config
from scripts import report
from tests.test_report import add_cell, fake_summary, write_matrix_config


def write_evals(mdir, cell_id, losses):
    records = [{"kind": "eval", "iter": 10 * (i + 1), "val_loss": v} for i, v in enumerate(losses)]
    (mdir / cell_id / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def flagged(tmp_path):
    config = write_matrix_config(tmp_path)
    mdir = dir_of_config(config)
    mdir.mkdir(parents=True)
    (mdir / "matrix.config").write_text(config.read_text())
    ids = {}
    for seed in (1, 2):
        ids["base", seed] = add_cell(mdir, "adamw", "none", seed, 10.0 + seed,
                                     summary=fake_summary(10.0 + seed, seed, batch_size=8))
        # reached its target: no S
        ids["mag", seed] = add_cell(mdir, "adamw", "magnitude", seed, 11.0, sparsity=0.5,
                                    summary=fake_summary(11.0, seed, sparsity=0.497,
                                                         batch_size=8))
    # one seed only (N), 6 points short of its target (S)
    ids["short"] = add_cell(mdir, "adamw", "magnitude", 1, 12.0, sparsity=0.9,
                            summary=fake_summary(12.0, 1, sparsity=0.84, batch_size=8,
                                                 pruning_incomplete=True))
    # bitter2: a larger batch and more tokens (C), one seed (N)
    big = fake_summary(10.5, 1, sparsity=0.5, batch_size=9, extra_budget="+14% batch")
    big["tokens_seen"] = 2 * big["tokens_seen"]
    ids["bitter2"] = add_cell(mdir, "adamw", "state", 1, 10.5, variant="bitter2", sparsity=0.5,
                              summary=big, extra=["BITTER2_SPEND=batch"])
    # another learning rate (H) and a rising validation loss (O)
    ids["lr"] = add_cell(mdir, "lion", "none", 1, 13.0, extra=["DROPOUT=0.2"],
                         summary=fake_summary(13.0, 1, batch_size=8))
    write_evals(mdir, ids["lr"], [3.0, 2.5, 2.6, 2.7])
    return mdir, ids


def test_every_caveat_is_flagged_in_tables_and_listed(flagged):
    mdir, ids = flagged
    out = report.write_report(mdir)
    found = out["caveats"]
    by_cell = {c: set(found[found["cell"] == c]["flag"]) for c in ids.values()}
    assert by_cell[ids["base", 1]] == by_cell[ids["base", 2]] == set()
    assert by_cell[ids["mag", 1]] == by_cell[ids["mag", 2]] == set()
    assert by_cell[ids["short"]] == {"S", "N"}
    assert by_cell[ids["bitter2"]] == {"C", "N"}
    assert by_cell[ids["lr"]] == {"H", "O", "N"}
    text = dict(zip(found["cell"] + found["flag"], found["text"]))
    assert "0.840 for a target of 0.9 (pruning incomplete)" in text[ids["short"] + "S"]
    assert "batch 9 against 8" in text[ids["bitter2"] + "C"]
    assert "+14% batch" in text[ids["bitter2"] + "C"]
    assert "learning rate 0.0001 (baseline 0.001)" in text[ids["lr"] + "H"]  # LION_LR, ADAMW_LR
    assert "DROPOUT 0.2 (baseline 0.0)" in text[ids["lr"] + "H"]
    assert "2.500 -> 2.600 -> 2.700" in text[ids["lr"] + "O"]
    md = out["report"].read_text()
    assert "## Caveats" in md and f"- `{ids['short']}` [S,N]" in md
    assert "| adamw | 11.500 ± 0.707 (n=2) | 12.000 [S,N] |" in md  # the 0.9 table
    assert f"| {ids['lr']} | done | 0.0001 | [H,N,O] |" in md


def test_no_significance_marker_with_fewer_than_two_seeds_a_side(flagged):
    mdir, _ = flagged
    deltas = report.write_report(mdir)["deltas"].set_index(["group", "target_sparsity"])
    one_seed = deltas.loc[("lion-none", 0.0)]
    assert math.isnan(one_seed["p"]) and one_seed["mark"].startswith("n/a")
    two = deltas.loc[("adamw-magnitude", 0.5)]
    assert two["mark"] in ("**", "*", "ns")


def test_a_clean_matrix_says_so(tmp_path):
    config = write_matrix_config(tmp_path)
    mdir = dir_of_config(config)
    mdir.mkdir(parents=True)
    for seed in (1, 2):
        add_cell(mdir, "adamw", "none", seed, 10.0 + seed)
    md = report.write_report(mdir)["report"].read_text()
    assert "## Caveats\n\nNone:" in md
