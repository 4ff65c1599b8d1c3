"""The retraining gate for quantile models: served mean pinball at h = 1 and h = 10."""

from __future__ import annotations

from stream.lifecycle.retrain import decide

NAIVE = {"last_value": 10.0, "ewma": 9.0, "moving_average": 12.0}


def qrep(served: float, mae: float = 5.0, h10: float | None = None, **naive: float) -> dict:
    """A quantile model's report: point MAE block plus per-horizon pinball."""
    b = dict(NAIVE, **naive)
    hz = {
        h: {"n": 100, "predictors": {"served": {"pinball": v}, **{k: {"pinball": x} for k, x in b.items()}}}
        for h, v in (("1", served), ("10", served if h10 is None else h10))
    }
    return {"predictors": {"lstm": {"mae": mae}, "ewma": {"mae": 4.0}}, "horizons": hz}


def point(mae: float) -> dict:
    return {"predictors": {"lstm": {"mae": mae}, "ewma": {"mae": 9.0}}}


def test_quantile_candidate_must_beat_every_naive_forecaster_and_the_current_model():
    assert decide(qrep(8.0), qrep(9.0), 0.02).promote
    assert "current model" in decide(qrep(8.0), qrep(8.1), 0.02).reason  # not 2 % better
    assert not decide(qrep(8.0), qrep(8.1), 0.02).promote
    d = decide(qrep(9.5), None, 0.02)  # ewma's pinball is 9.0
    assert not d.promote and "ewma at h=1" in d.reason
    assert not decide(qrep(8.0, h10=9.5), qrep(9.9), 0.02).promote  # h = 10 counts too
    assert decide(qrep(9.0), None, 0.0).promote  # equal to the best naive: the fallback serves it


def test_quantile_candidate_against_a_point_current_model_compares_mae():
    assert decide(qrep(8.0, mae=5.0), point(6.0), 0.02).promote
    d = decide(qrep(8.0, mae=5.0), point(5.05), 0.02)
    assert not d.promote and "point model" in d.reason


def test_non_finite_pinball_never_promotes():
    assert not decide(qrep(float("nan")), None, 0.02).promote
    assert not decide(qrep(8.0), qrep(float("nan")), 0.02).promote


def test_point_candidates_keep_the_mae_gate():
    assert decide(point(5.0), point(8.0), 0.02).promote
    assert not decide(point(8.5), point(8.0), 0.02).promote
