"""The report's caveats: every cell that did not get what its label says is flagged."""
import json
import math
import statistics

import pytest

from lib.run import dir_of_config
from scripts import report
from tests.test_report import (add_cell, fake_summary, held_out_loss, squash,
                               write_matrix_config)


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
        ids["mag", seed] = add_cell(mdir, "adamw", "magnitude", seed, 11.0 + seed / 10,
                                    sparsity=0.5,
                                    summary=fake_summary(11.0 + seed / 10, seed, sparsity=0.497,
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
    md = squash(out["report"].read_text())
    assert "## Caveats" in md and f"- `{ids['short']}` [S,N]" in md
    base = [held_out_loss(10.0 + seed, seed) for seed in (1, 2)]
    assert (f"| adamw | {statistics.mean(base):.3f} ± {statistics.stdev(base):.3f} (n=2) | "
            f"{held_out_loss(12.0, 1):.3f} [S,N] |") in md  # the 0.9 table
    assert f"| {ids['lr']} | done | grid | 0.0001 | [H,N,O] |" in md


def test_one_pair_is_no_test_and_never_a_star(flagged):
    mdir, _ = flagged
    verdict = report.write_report(mdir)["verdict"].set_index(["group", "target_sparsity"])
    one_seed = verdict.loc[("lion-none", 0.0)]
    assert one_seed["n_pairs"] == 1 and math.isnan(one_seed["p"])
    assert one_seed["mark"] == "n=1: no test"
    two = verdict.loc[("adamw-magnitude", 0.5)]  # two pairs: a test, the family's only one
    d = [held_out_loss(11.0 + seed / 10, seed) - held_out_loss(10.0 + seed, seed)
         for seed in (1, 2)]
    # by hand: with n = 2, sd / sqrt(n) = |d1 - d2| / 2, so t = (d1 + d2) / |d1 - d2|, and t
    # with one degree of freedom is Cauchy: p = 1 - 2 atan(|t|) / pi (here 0.58: "ns")
    t = (d[0] + d[1]) / abs(d[0] - d[1])
    p = 1 - 2 * math.atan(abs(t)) / math.pi
    assert two["n_pairs"] == 2 and two["t"] == pytest.approx(t, rel=1e-9)
    assert two["p"] == pytest.approx(p, rel=1e-9) and two["p_holm"] == pytest.approx(p, rel=1e-9)
    assert p > 0.05 and two["mark"] == "ns"


def test_seeds_that_give_the_same_final_loss_are_flagged(tmp_path):
    config = write_matrix_config(tmp_path)
    mdir = dir_of_config(config)
    mdir.mkdir(parents=True)
    ids = [add_cell(mdir, "adamw", "none", seed, 10.0,
                    summary=fake_summary(10.0, seed, test_loss=2.5)) for seed in (1, 2, 3)]
    ids += [add_cell(mdir, "adamw", "magnitude", seed, 10.0 + seed, sparsity=0.5,
                     summary=fake_summary(10.0 + seed, seed, sparsity=0.5)) for seed in (1, 2)]
    found = report.write_report(mdir)["caveats"]
    flagged = set(found[found["flag"] == "I"]["cell"])
    assert flagged == set(ids[:3])
    text = found[found["flag"] == "I"]["text"].iloc[0]
    assert "3 seeds give exactly the same final loss" in text
    assert f"{math.log(10.0):.6g}" in text


def test_provenance_differences_are_listed(tmp_path):
    config = write_matrix_config(tmp_path)
    mdir = dir_of_config(config)
    mdir.mkdir(parents=True)
    ids = [add_cell(mdir, "adamw", "none", seed, 10.0 + seed) for seed in (1, 2, 3)]
    base = {"git_commit": "abc", "git_dirty": False, "git_diff_sha256": None,
            "versions": {"python": "3.11.7", "torch": "2.5.1", "numpy": "2.1.0"},
            "device_name": "NVIDIA H100", "cuda": "12.4", "cudnn": 90100, "argv": ["x"]}
    other = {**base, "versions": {**base["versions"], "torch": "2.6.0"}}
    for i, (cell, prov) in enumerate(zip(ids, (base, base, other))):
        # each cell's command line names its own config: never listed as a difference
        prov = {**prov, "argv": ["python", "-m", "gpt2.train", f"{cell}/config{i}"]}
        (mdir / cell / "provenance.json").write_text(json.dumps(prov))
    md = squash(report.write_report(mdir)["report"].read_text())
    section = md[md.index("### Provenance"):]
    assert "- `versions.torch` differs:" in section
    assert f"  - '2.5.1': `{ids[0]}`, `{ids[1]}`" in section
    assert f"  - '2.6.0': `{ids[2]}`" in section
    assert "git_commit" not in section and "versions.numpy" not in section
    assert "argv" not in section
    (mdir / ids[2] / "provenance.json").write_text(json.dumps(base))
    md = squash(report.write_report(mdir)["report"].read_text())
    assert "Every cell (3) has the same provenance." in md


def test_a_clean_matrix_says_so(tmp_path):
    config = write_matrix_config(tmp_path)
    mdir = dir_of_config(config)
    mdir.mkdir(parents=True)
    for seed in (1, 2):
        add_cell(mdir, "adamw", "none", seed, 10.0 + seed)
    md = squash(report.write_report(mdir)["report"].read_text())
    assert "## Caveats\n\nNone:" in md


def test_tuned_rates_of_confirmation_cells_are_not_a_caveat(tmp_path):
    """A confirmation cell's rate was chosen by the tuning protocol on the baseline's budget:
    it is not flagged H; the same rate difference in an ordinary grid cell is."""
    config = write_matrix_config(tmp_path)
    mdir = dir_of_config(config)
    mdir.mkdir(parents=True)
    confirm = {"status": "done", "exit_code": 0, "wall_s": 1.0, "role": "confirm"}
    for seed in (1, 2):
        add_cell(mdir, "adamw", "none", seed, 10.0 + seed, state=confirm)
        add_cell(mdir, "lion", "none", seed, 11.0 + seed, state=confirm,
                 extra=("LION_LR=3e-4",))
    found = report.write_report(mdir)["caveats"]
    assert "H" not in set(found["flag"])
    grid = tmp_path / "grid"
    grid.mkdir()
    mdir = dir_of_config(write_matrix_config(grid))
    mdir.mkdir(parents=True)
    for seed in (1, 2):
        add_cell(mdir, "adamw", "none", seed, 10.0 + seed)
        add_cell(mdir, "lion", "none", seed, 11.0 + seed, extra=("LION_LR=3e-4",))
    found = report.write_report(mdir)["caveats"]
    assert "learning rate" in " ".join(found.loc[found["flag"] == "H", "text"])
