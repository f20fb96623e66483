"""Early stopping: the best evaluation and the stop decision in both modes, min_delta, NaN, patience 0, an exact
resume from the state dict, bad settings and states refused by name."""

from __future__ import annotations

import pytest
import torch

from itnet_scale.train.early_stopping import EarlyStopping, EarlyStoppingDecision, EarlyStoppingSettings


def run(tracker: EarlyStopping, values: list[float], first_step: int = 100) -> list[tuple[bool, bool]]:
    return [tuple(tracker.update(v, first_step + 100 * i)) for i, v in enumerate(values)]


def test_max_mode_with_patience() -> None:
    tracker = EarlyStopping(EarlyStoppingSettings(mode="max", patience=2))
    decisions = run(tracker, [0.50, 0.60, 0.55, 0.61, 0.61, 0.40])
    #                          best  best  bad   best  bad (equal is no gain)  bad → stop
    assert decisions == [(True, False), (True, False), (False, False), (True, False), (False, False), (False, True)]
    assert tracker.best == 0.61 and tracker.best_step == 400 and tracker.bad_evaluations == 2
    assert tracker.should_stop and tracker.evaluations == 6
    assert isinstance(tracker.update(0.1, 700), EarlyStoppingDecision) and tracker.update(0.1, 800).stop


def test_min_mode_min_delta_and_nan() -> None:
    tracker = EarlyStopping(EarlyStoppingSettings(mode="min", patience=3, min_delta=0.1))
    decisions = run(tracker, [float("nan"), 2.0, 1.95, 1.85, float("nan"), 1.9, 1.7])
    # NaN never improves (nor becomes the best); 1.95 is within min_delta of 2.0; 1.85 beats 2.0 by more than 0.1
    assert [d[0] for d in decisions] == [False, True, False, True, False, False, True]
    assert [d[1] for d in decisions] == [False] * 7
    assert tracker.best == 1.7 and tracker.best_step == 700 and tracker.bad_evaluations == 0
    assert run(tracker, [1.65, 1.61, 2.0]) == [(False, False), (False, False), (False, True)]


def test_patience_zero_never_stops_but_tracks_the_best() -> None:
    tracker = EarlyStopping(EarlyStoppingSettings(mode="max"))
    decisions = run(tracker, [3.0, 2.0, 1.0, 0.0, -1.0])
    assert not any(stop for _, stop in decisions) and tracker.best == 3.0 and tracker.best_step == 100
    assert tracker.bad_evaluations == 4


def test_resume_goes_on_exactly(tmp_path) -> None:
    settings = EarlyStoppingSettings(mode="max", patience=3, min_delta=0.01)
    values = [0.2, 0.5, 0.49, 0.505, 0.7, 0.69, 0.695, 0.7]
    uninterrupted = EarlyStopping(settings)
    expected = run(uninterrupted, values)
    first = EarlyStopping(settings)
    run(first, values[:4])
    torch.save({"early_stopping": first.state_dict()}, tmp_path / "client_state.pt")  # as a checkpoint holds it
    resumed = EarlyStopping(settings)
    resumed.load_state_dict(torch.load(tmp_path / "client_state.pt", weights_only=True)["early_stopping"])
    assert run(resumed, values[4:], first_step=500) == expected[4:]
    assert resumed.state_dict() == uninterrupted.state_dict()
    assert expected[-1] == (False, True)


def test_bad_settings_and_states_are_refused_by_name() -> None:
    for settings, message in (({"mode": "maximum"}, r"early_stopping.mode must be one of \('max', 'min'\), got "
                                                    r"'maximum'"),
                              ({"patience": -1}, r"early_stopping.patience must be an int >= 0 \(0 = never stop\)"),
                              ({"patience": 1.5}, r"early_stopping.patience must be an int >= 0"),
                              ({"min_delta": -0.1}, r"early_stopping.min_delta must be >= 0, got -0.1"),
                              ({"min_delta": float("nan")}, r"early_stopping.min_delta must be >= 0, got nan")):
        with pytest.raises(ValueError, match=message):
            EarlyStoppingSettings(**settings)
    tracker = EarlyStopping(EarlyStoppingSettings(mode="min"))
    saved = EarlyStopping(EarlyStoppingSettings(mode="max"))
    saved.update(1.0, 10)
    with pytest.raises(ValueError, match=r"tracked with mode='max'; this run has early_stopping.mode='min'"):
        tracker.load_state_dict(saved.state_dict())
    with pytest.raises(ValueError, match=r"early-stopping state is malformed \(KeyError: 'best_step'\)"):
        tracker.load_state_dict({"mode": "min", "best": 1.0, "bad_evaluations": 0, "evaluations": 1})
