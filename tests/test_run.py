"""`make`'s entry point runs what .config describes: the matrix or one training run."""
from gpt2 import train
from scripts import matrix, run


def test_dispatches_on_matrix_mode(tiny_config, monkeypatch):
    called = []
    monkeypatch.setattr(matrix, "main", lambda argv: called.append(("matrix", argv)) or 0)
    monkeypatch.setattr(train, "main", lambda argv: called.append(("train", argv)) or 0)
    single = str(tiny_config(name="single"))
    grid = str(tiny_config("MATRIX=y", name="grid"))
    assert run.main([single]) == 0 and run.main([grid]) == 0
    assert called == [("train", [single]), ("matrix", [grid])]


def test_trainer_refuses_a_matrix_config(tiny_config, capsys):
    assert train.main([str(tiny_config("MATRIX=y"))]) == 2
    assert "describes a test matrix" in capsys.readouterr().err


def test_bad_config_is_reported_once(tiny_config, capsys):
    assert run.main([str(tiny_config()), "--set", "MAX_ITERS=0"]) == 2
    assert "MAX_ITERS=0: outside the allowed range" in capsys.readouterr().err
