"""Which allocation policy serves each profile: the DDQN only where it wins on validation.

At training time the DDQN, the tuned EWMA rule and the tuned quantile rule
(:mod:`ml.policy.rules`, tuned on the *training* links) are scored on the *validation*
links of each profile with :func:`ml.policy.evaluation.evaluate_series`; the one with
the highest mean reward serves that profile (``"*"``: all validation links, for
profiles not seen in training). Ties go to the simpler policy (rules before the DDQN),
so a DDQN that only equals a rule does not serve.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ml.policy.env import Forecaster
from ml.policy.evaluation import PolicyFn, evaluate_series
from ml.policy.rules import EwmaRule, QuantileFn, QuantileRule
from stream.core.records import WINDOW

#: Preference on ties, simplest first.
ORDER: tuple[str, ...] = ("ewma_rule", "quantile_rule", "ddqn")


def select_policies(
    val_by_group: dict[str, Sequence[np.ndarray]],
    forecaster: Forecaster | Mapping[str, Forecaster],
    ddqn: PolicyFn,
    ewma_rule: EwmaRule,
    quantile_rule: tuple[QuantileRule, QuantileFn | Mapping[str, QuantileFn]] | None,
    say: Callable[[str], None] = lambda s: None,
) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """(group -> serving policy, group -> the validation evaluation behind it).

    ``val_by_group`` maps ``"*"`` and each profile to its validation series (T, 4). The forecaster
    (what the DDQN's observation and predict-then-allocate see) and the quantile rule's
    ``quantile_fn`` are one for all groups, or one per group (a mapping; missing groups take
    ``"*"``'s), so that each group is scored with the forecasts serving gives it.
    """
    serving: dict[str, str] = {}
    evidence: dict[str, dict[str, Any]] = {}
    for group, series in val_by_group.items():
        usable = [s for s in series if s.shape[0] > WINDOW + 1]
        if not usable:
            continue
        qr = None if quantile_rule is None else (quantile_rule[0], _of(quantile_rule[1], group))
        ev = evaluate_series(usable, _of(forecaster, group), ddqn, ewma_rule=ewma_rule, quantile_rule=qr)
        mean = ev["mean_reward"]
        scores = {k: mean.get(k) for k in ORDER if mean.get(k) is not None}
        best = max(ORDER, key=lambda k: (scores.get(k, -np.inf), -ORDER.index(k)))
        serving[group] = best
        evidence[group] = {
            "mean_reward": {k: mean.get(k) for k in (*ORDER, "best_fixed", "predict_then_allocate", "oracle")},
            "ddqn_action_histogram": ev.get("action_histogram"),
            "ddqn_collapsed": ev.get("collapsed"),
            "decisions": ev["decisions"],
        }
        say(f"policy for {group}: {best} ({', '.join(f'{k} {v:.4f}' for k, v in scores.items())})")
    if "*" not in serving:
        serving["*"] = "ewma_rule"  # no validation decisions at all: the transparent rule
    return serving, evidence


def _of(fn: Any, group: str) -> Any:
    """``fn`` itself, or its entry for ``group`` (``"*"``'s when missing) when it is a mapping."""
    return fn.get(group, fn["*"]) if isinstance(fn, Mapping) else fn
