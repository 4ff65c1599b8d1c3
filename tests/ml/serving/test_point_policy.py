"""A point model (``bwp train --head point``, v1 artefacts) serves the policy chosen at training
per profile: the DDQN or the EWMA rule, and says which (untrained networks)."""

from __future__ import annotations

import numpy as np
import pytest

from ml.data import make_windows
from ml.forecast.features import Preprocessor
from ml.serving import registry as reg
from stream.core.errors import ModelError


@pytest.fixture(scope="module")
def nets():
    from ml.forecast.lstm import build_lstm
    from ml.policy.observation import OBS_DIM
    from ml.policy.qnet import build_qnetwork

    s = np.abs(np.random.default_rng(0).normal(10, 2, (60, 4)))
    return build_lstm(seed=0), build_qnetwork(OBS_DIM, seed=0), Preprocessor().fit(*make_windows(s))


def _predictor(tmp_path, nets, policy):
    from ml.serving.predictor import Predictor

    lstm, qnet, pre = nets
    reg.save_version(tmp_path, lstm, qnet, pre, {"policy": policy} if policy is not None else {})
    return Predictor(reg.load_version(tmp_path), xla=False)


def _windows(n: int = 64) -> np.ndarray:
    rng = np.random.default_rng(3)
    w = np.abs(rng.normal(50, 20, (n, 10, 4)))
    w[:, :, 2] = 0.001
    w[:, :, 3] = 0.99
    return w


def test_profiles_that_chose_the_ewma_rule_get_its_actions(tmp_path, nets):
    from ml.policy.rules import ewma_rule_actions

    p = _predictor(tmp_path, nets, {"serving": {"*": "ddqn", "internet": "ewma_rule"},
                                    "ewma_rule": {"alpha": 0.3, "k": 0.7}})  # fmt: skip
    w = _windows()
    profiles = ["internet" if i % 2 else "datacenter" for i in range(len(w))]
    pred = p.predict(w, profiles)
    odd = np.arange(len(w)) % 2 == 1
    assert pred.policy is not None and set(pred.policy[odd]) == {"ewma_rule"} and set(pred.policy[~odd]) == {"ddqn"}
    np.testing.assert_array_equal(pred.action[odd], ewma_rule_actions(w, 0.3, 0.7)[odd])
    ddqn = p.predict(w, ["datacenter"] * len(w)).action
    np.testing.assert_array_equal(pred.action[~odd], ddqn[~odd])
    assert np.any(ddqn[odd] != pred.action[odd])  # the rule did change actions: the check can fail


def test_a_v1_artefact_serves_the_ddqn_and_decisions_name_the_policy(tmp_path, nets):
    from stream.core.records import Telemetry
    from stream.pipeline.model import build_decisions

    p = _predictor(tmp_path, nets, None)
    w = _windows(4)
    pred = p.predict(w)
    assert list(pred.policy) == ["ddqn"] * 4
    recs = [Telemetry("l", i, 1, 5.0, 50.0, 0.0, 1.0) for i in range(4)]
    assert [d.policy for d in build_decisions(recs, pred, p.version, 0, 3)] == ["ddqn"] * 4
    pred.policy[:] = "ewma_rule"
    assert [d.policy for d in build_decisions(recs, pred, p.version, 0, 3)] == ["ewma_rule"] * 4


def test_a_point_model_cannot_claim_the_quantile_rule(tmp_path, nets):
    with pytest.raises(ModelError, match="point model serves ddqn or ewma_rule"):
        _predictor(tmp_path, nets, {"serving": {"*": "quantile_rule"}})
