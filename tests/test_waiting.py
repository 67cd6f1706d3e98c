"""The suite's one wait: conftest.wait_for polls for an event and names it when stuck."""
import itertools

import pytest

import conftest


def test_wait_for_returns_what_became_true():
    polls = itertools.count()
    assert conftest.wait_for(lambda: next(polls) >= 3 and "ready", "the third poll",
                             every_s=0) == "ready"


def test_wait_for_names_the_event_it_gave_up_on(monkeypatch):
    monkeypatch.setattr(conftest, "EVENT_LIMIT_S", 0.0)
    with pytest.raises(AssertionError, match="gave up waiting 0 s for the ckpt.pt of cell 2"):
        conftest.wait_for(lambda: False, "the ckpt.pt of cell 2", every_s=0)


def test_the_limit_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(conftest.EVENT_LIMIT_ENV, "1800")
    assert conftest._event_limit_s() == 1800.0
    monkeypatch.setenv(conftest.EVENT_LIMIT_ENV, "soon")
    with pytest.raises(pytest.UsageError, match="KMATRIX_TEST_TIMEOUT_S='soon' is not a "
                                                "positive number of seconds"):
        conftest._event_limit_s()
