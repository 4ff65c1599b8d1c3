"""bwp retrain: the promotion gate (pure), time-based data split, recency oversampling, lock, smoke run."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.core.errors import BwpError, ConfigError, DataError
from stream.core.jsonl import write_jsonl
from stream.lifecycle.retrain import RetrainLock, decide
from stream.lifecycle.retrain_data import DAY_MS, RetrainConfig, copies_for_age, load_data, parse_duration

BASE = {"last_value": 10.0, "ewma": 9.0, "harmonic_mean": 11.0, "moving_average": 12.0}


def rep(lstm: float, **baselines: float) -> dict:
    b = dict(BASE, **baselines)
    return {"predictors": {"lstm": {"mae": lstm}, **{k: {"mae": v} for k, v in b.items()}}}


def test_parse_duration():
    assert parse_duration("14d") == 14 * DAY_MS
    assert parse_duration("1h") == 3_600_000
    assert parse_duration("90s") == 90_000
    assert parse_duration("2w") == 14 * DAY_MS
    assert parse_duration("1.5h") == 5_400_000
    for bad in ("", "d", "-1d", "0d", "3y"):
        with pytest.raises(ConfigError):
            parse_duration(bad)


def test_gate_promotes_clearly_better_candidate():
    d = decide(rep(5.0), rep(8.0), 0.02)
    assert d.promote and "beats the current model and every baseline" in d.reason


def test_gate_refuses_worse_than_current():
    d = decide(rep(7.0), rep(6.0), 0.02)
    assert not d.promote and "current model 6" in d.reason


def test_gate_refuses_candidate_losing_to_a_baseline_even_if_better_than_current():
    d = decide(rep(8.9), rep(12.0), 0.02)
    # 8.9 > 0.98 * 9.0 = 8.82: not a clear win over EWMA
    assert not d.promote and "ewma 9" in d.reason


def test_gate_margin_is_relative():
    assert decide(rep(7.84), rep(8.0), 0.02).promote  # exactly 2 % better
    assert not decide(rep(7.85), rep(8.0), 0.02).promote
    assert decide(rep(7.99), rep(8.0), 0.0).promote


def test_gate_without_current_model_uses_baselines_only():
    assert decide(rep(5.0), None, 0.02).promote
    assert "no current model" in decide(rep(5.0), None, 0.02).reason
    assert not decide(rep(9.5), None, 0.02).promote


def test_gate_refuses_nan():
    assert not decide(rep(float("nan")), rep(8.0), 0.02).promote
    assert not decide(rep(5.0), rep(float("nan")), 0.02).promote
    with pytest.raises(ConfigError):
        decide(rep(5.0), rep(8.0), 1.5)


@given(
    cand=st.floats(0.01, 100),
    cur=st.floats(0.01, 100),
    base=st.lists(st.floats(0.01, 100), min_size=4, max_size=4),
    margin=st.floats(0, 0.5),
)
def test_gate_property(cand, cur, base, margin):
    names = list(BASE)
    d = decide(rep(cand, **dict(zip(names, base))), rep(cur), margin)
    assert d.promote == all(cand <= (1 - margin) * r for r in [cur, *base])
    assert d.reason


def test_copies_decay_with_age():
    hl = 3 * DAY_MS
    assert copies_for_age(0, hl) == 4
    assert copies_for_age(hl, hl) == 3  # 1 + round(1.5)
    assert copies_for_age(2 * hl, hl) == 2
    assert copies_for_age(10 * hl, hl) == 1
    ages = np.arange(0, 14) * DAY_MS
    c = [copies_for_age(a, hl) for a in ages]
    assert c == sorted(c, reverse=True)


def _recording(tmp_path, days: float = 4.0, links: int = 6, step_ms: int = 600_000, seed: int = 5):
    from simulator.generator import generate_records

    steps = int(days * DAY_MS / step_ms)
    recs = list(generate_records("mixed", links, steps, seed, step_ms=step_ms, start_ms=1_760_000_000_000))
    d = tmp_path / "rec"
    # two files with interleaved halves, as a recording of several parts would be
    write_jsonl(d / "a.jsonl.gz", recs[::2])
    write_jsonl(d / "b.jsonl", recs[1::2])
    return d, recs


def test_load_data_splits_by_time_and_oversamples_recent(tmp_path):
    d, recs = _recording(tmp_path)
    newest = max(r.ts_ms for r in recs)
    cfg = RetrainConfig(data=[d], window_ms=3 * DAY_MS, holdout_ms=DAY_MS // 2, half_life_ms=DAY_MS, chunk_ms=DAY_MS)
    data = load_data(cfg)
    cut = newest - DAY_MS // 2
    start = newest - 3 * DAY_MS
    info = data.info
    assert info["records_read"] == sum(r.ts_ms > start for r in recs) < len(recs)
    assert info["holdout_records"] == sum(r.ts_ms > cut for r in recs)
    assert info["training_period_records"] == sum(start < r.ts_ms <= cut for r in recs)
    # every holdout series = 10 context states + exactly the link's holdout states
    by_link = {}
    for r in recs:
        by_link.setdefault(r.link_id, []).append(r)
    for ls in data.holdout:
        hold = [r.features() for r in by_link[ls.link_id] if r.ts_ms > cut]
        ctx = [r.features() for r in by_link[ls.link_id] if start < r.ts_ms <= cut][-10:]
        np.testing.assert_array_equal(ls.data, np.array(ctx + hold))
    # no training or validation state comes from the holdout, and none is older than the window
    tr_ids = set(info["train_links"])
    assert tr_ids.isdisjoint(info["val_links"])
    for ls in data.train + data.val:
        assert ls.ts_range_ms[1] <= cut and ls.ts_range_ms[0] > start
    assert {ls.link_id for ls in data.train} == tr_ids
    assert [ls.link_id for ls in data.val] == info["val_links"]
    # recent chunks appear more often than old ones
    copies = {}
    for ls in data.train:
        copies[(ls.link_id, ls.ts_range_ms)] = copies.get((ls.link_id, ls.ts_range_ms), 0) + 1
    lid = info["train_links"][0]
    mine = sorted((k[1][1], n) for k, n in copies.items() if k[0] == lid)
    assert mine[-1][1] > mine[0][1]


def test_load_data_errors(tmp_path):
    with pytest.raises(DataError, match="no telemetry records"):
        load_data(RetrainConfig(data=[tmp_path]))
    d, _ = _recording(tmp_path, days=0.2, links=3)
    with pytest.raises(DataError, match="training period"):
        load_data(RetrainConfig(data=[d], window_ms=DAY_MS, holdout_ms=DAY_MS // 2 - 1))


def test_lock_is_exclusive(tmp_path):
    with RetrainLock(tmp_path):
        with pytest.raises(BwpError, match="another `bwp retrain`"), RetrainLock(tmp_path):
            pass
        # another thread (or process) is refused too, not queued
        err = []
        t = threading.Thread(target=lambda: err.append(_try_lock(tmp_path)))
        t.start()
        t.join(5)
        assert err == ["refused"]
    with RetrainLock(tmp_path):  # released on exit
        pass


def _try_lock(path) -> str:
    try:
        with RetrainLock(path):
            return "got it"
    except BwpError:
        return "refused"


@pytest.mark.slow
def test_retrain_quick_end_to_end(tmp_path, trained_model_dir):
    """Quick candidate on a tiny recording vs a current model; report, flag and registry checked."""
    from ml.forecast.lstm import LSTMConfig
    from ml.policy.ddqn import DDQNConfig
    from ml.serving import registry
    from stream.lifecycle.drift import RetrainFlag
    from stream.lifecycle.retrain import run_retrain

    model_dir = tmp_path / "models"
    shutil.copytree(trained_model_dir, model_dir)  # a copy: the shared registry stays as it is
    current = registry.current_version(model_dir)
    assert current is not None
    d, _ = _recording(tmp_path, days=2.0, links=6, step_ms=600_000, seed=11)
    RetrainFlag(model_dir).request("test: drift seen")

    cfg = RetrainConfig(
        data=[d], model_dir=model_dir, window_ms=2 * DAY_MS, holdout_ms=DAY_MS // 3, margin=0.02, quick=True,
        half_life_ms=DAY_MS, progress=lambda s: None,
        train_overrides={"lstm": LSTMConfig(epochs=1, patience=1, lr_patience=1, max_train_windows=256,
                                            max_val_windows=128, time_budget_s=5),
                         "ddqn": DDQNConfig.quick(episodes=8, learning_starts=100)},
    )  # fmt: skip
    rep = run_retrain(cfg, settings=_FileOnlySettings(model_dir))
    cand = rep["candidate"]["version"]
    assert cand in registry.list_versions(model_dir) and cand != current
    for who in ("candidate", "current"):
        m = rep[who]["metrics"]
        assert m["n"] > 0 and set(m["predictors"]) >= {"lstm", "last_value", "ewma"}
    assert rep["candidate"]["metrics"]["n"] == rep["current"]["metrics"]["n"]  # same holdout for both
    for who in ("candidate", "current"):  # the policy reward of the served allocations, in the report
        pol = rep[who]["metrics"]["policy"]
        assert pol["decisions"] > 0 and np.isfinite(pol["mean_reward"])
        assert rep[who]["policy_reward"] == pol["mean_reward"]
    assert rep["candidate"]["metrics"]["policy"]["decisions"] == rep["current"]["metrics"]["policy"]["decisions"]
    expected = decide(rep["candidate"]["metrics"], rep["current"]["metrics"], 0.02)
    assert rep["decision"] == {"promote": expected.promote, "reason": expected.reason}
    assert registry.current_version(model_dir) == (cand if expected.promote else current)
    assert rep["requested"]["reason"] == "test: drift seen"
    assert RetrainFlag(model_dir).read() is None  # cleared after the run
    saved = json.loads(Path(rep["report_path"]).read_text())
    assert saved["decision"] == rep["decision"] and saved["data"]["holdout"] == rep["data"]["holdout"]
    assert saved["candidate"]["policy_reward"] == rep["candidate"]["policy_reward"]
    meta = registry.read_metadata(model_dir, cand)
    assert meta["training_data"]["kind"] == "given"


class _FileOnlySettings:
    """Settings stand-in pointing the Redis flag at a port nobody listens on (file flag only)."""

    def __init__(self, model_dir):
        from stream.ops.stack import free_port

        self.model_dir = model_dir
        self.key_prefix = "bwp"
        self.redis_url = f"redis://127.0.0.1:{free_port()}/0"

    def redis_kwargs(self):
        return {}


def test_select_files_thins_evenly_and_keeps_straddlers():
    from pathlib import Path

    from stream.lifecycle.recordings import FileInfo
    from stream.lifecycle.retrain_data import select_files

    H = 3_600_000
    infos = [FileInfo(Path(f"h{i:02d}"), 100, i * H, (i + 1) * H - 1) for i in range(30)]
    newest = 30 * H - 1
    cut = 26 * H - 1 + H // 2  # file 26 straddles the cut
    chosen, frac = select_files(infos, -1, cut, newest, 800)
    assert frac == pytest.approx(800 / 3000)
    names = [fi.path.name for fi in chosen]
    assert "h26" in names
    train = [int(n[1:]) for n in names if int(n[1:]) < 26]
    hold = [int(n[1:]) for n in names if int(n[1:]) > 26]
    assert len(train) == 6  # floor(26 * 0.267)
    assert hold == [29]  # floor(3 * 0.267) = 0, but the holdout keeps its newest file
    assert max(np.diff(train)) <= 4  # spread over the period, not the first files only
    assert select_files(infos, -1, cut, newest, None) == (infos, 1.0)
    assert select_files(infos, 20 * H, cut, newest, None)[0] == infos[20:]


def test_windows_never_span_a_gap_in_seq(tmp_path):
    from simulator.generator import generate_records

    step = 600_000
    recs = [r for r in generate_records("mixed", 4, 600, 2, step_ms=step, start_ms=1_760_000_000_000)
            if not 200 <= r.seq < 230]  # fmt: skip  # 5 hours lost for every link
    write_jsonl(tmp_path / "r.jsonl", recs)
    data = load_data(RetrainConfig(data=[tmp_path], window_ms=10 * DAY_MS, holdout_ms=DAY_MS // 4,
                                   chunk_ms=100 * DAY_MS))  # fmt: skip
    by = {}
    for r in recs:
        by.setdefault(r.link_id, []).append(r)
    for ls in data.train + data.val:
        # rows are consecutive seqs of one link: find the first row, check the rest follow
        bw = [r.bandwidth_mbps for r in by[ls.link_id]]
        seqs = [r.seq for r in by[ls.link_id]]
        i = next(i for i in range(len(bw)) if bw[i : i + ls.steps] == ls.data[:, 1].tolist())
        assert seqs[i + ls.steps - 1] - seqs[i] == ls.steps - 1
    assert len({ls.ts_range_ms for ls in data.val}) == 2 * len(data.info["val_links"])  # two runs per link


def test_cli_only_if_requested_and_failure_report(tmp_path, capsys):
    from stream.cli.main import main
    from stream.lifecycle.drift import RetrainFlag
    from stream.ops.stack import free_port

    models = tmp_path / "models"
    common = ["retrain", "--data", str(tmp_path / "none"), "--model-dir", str(models),
              "--redis-url", f"redis://127.0.0.1:{free_port()}/0"]  # fmt: skip
    assert main(common + ["--only-if-requested"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] is True
    assert not (models / "retrain-reports").exists()
    RetrainFlag(models).request("drift on profile internet")
    assert main(common + ["--only-if-requested"]) == 2  # it ran, and failed: no data
    (report,) = (models / "retrain-reports").glob("*.json")
    rep = json.loads(report.read_text())
    assert "does not exist" in rep["error"] and rep["requested"]["reason"] == "drift on profile internet"
    assert RetrainFlag(models).read() is not None  # a failed run leaves the request for the next one
