"""The compression rule and the codec profile file: property tests of the choice, file round trip, bad files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.core.compression import (
    NONE,
    Compression,
    CompressionProfile,
    LevelProfile,
    choose,
    choose_levels,
    compression_of,
    default_profile,
    load_profile,
    profile_from,
)
from stream.core.errors import ConfigError
from stream.core.schemas import load_schema
from stream.core.settings import load_settings

PROFILE_SCHEMA = load_schema("compression_profile")


@st.composite
def profiles(draw: st.DrawFn) -> CompressionProfile:
    """Random ladders: ascending levels, non-increasing speed and ratio (what a valid profile is)."""
    levels = sorted(draw(st.sets(st.integers(1, 19), max_size=19)))
    speeds = sorted((draw(st.floats(0.1, 5000.0)) for _ in levels), reverse=True)
    ratios = sorted((draw(st.floats(0.01, 1.0)) for _ in levels), reverse=True)
    return CompressionProfile(tuple(LevelProfile(lv, s, r) for lv, s, r in zip(levels, speeds, ratios)))


bandwidths = st.floats(0.0, 1e7, allow_nan=False)


def _level(c: Compression) -> int:
    return 0 if c.level is None else c.level


@given(p=profiles(), a=bandwidths, b=bandwidths)
def test_more_bandwidth_never_selects_a_higher_level(p: CompressionProfile, a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    assert _level(choose(hi, p)) <= _level(choose(lo, p))


@given(p=profiles())
def test_infinite_bandwidth_selects_none(p: CompressionProfile) -> None:
    assert choose(math.inf, p) == NONE
    assert choose_levels(np.array([math.inf]), p).tolist() == [0]


@given(p=profiles(), bw=st.floats(1e-3, 1e7))
def test_the_choice_minimises_the_formula(p: CompressionProfile, bw: float) -> None:
    got = _level(choose(bw, p))
    times = {lv: float(p.transfer_time_s(lv, bw)) for lv in p.options()}
    assert times[got] <= min(times.values()) * (1 + 1e-9)
    # ties go to the lower level: every lower option is (within rounding) slower
    assert all(times[lv] > times[got] * (1 - 1e-9) for lv in p.options() if lv < got)


@given(p=profiles(), bws=st.lists(bandwidths, max_size=30))
def test_vector_and_scalar_choice_agree(p: CompressionProfile, bws: list[float]) -> None:
    assert choose_levels(np.array(bws), p).tolist() == [_level(choose(b, p)) for b in bws]


def test_none_is_ratio_1_infinite_speed_and_units_are_mbit_and_mb() -> None:
    p = CompressionProfile((LevelProfile(1, 100.0, 0.5),), chunk_bytes=1_000_000)
    assert p.transfer_time_s(0, 8.0) == pytest.approx(1.0)  # 1 MB over 8 Mbit/s = 1 s
    assert p.transfer_time_s(1, 8.0) == pytest.approx(0.5)  # half the bytes
    assert p.transfer_time_s(1, 1e6) == pytest.approx(0.01)  # compress-bound: 1 MB at 100 MB/s
    # level 1 beats none below 8 * 100 * 1.0 = 800 Mbit/s; at exactly 800 they tie and none wins
    assert p.thresholds_mbps == (800.0,)
    assert (choose(799.9, p), choose(800.0, p)) == (compression_of(1), NONE)
    assert choose(0.0, p) == compression_of(1)
    with pytest.raises(ValueError, match="got nan"):
        choose(math.nan, p)


def test_wire_form_round_trip_and_errors() -> None:
    for c in (NONE, compression_of(1), compression_of(19)):
        assert Compression.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert NONE.to_dict() == {"codec": "none"} and compression_of(7).to_dict() == {"codec": "zstd", "level": 7}
    for bad in ({"codec": "zstd"}, {"codec": "zstd", "level": 0}, {"codec": "zstd", "level": 20},
                {"codec": "zstd", "level": 3.0}, {"codec": "none", "level": 1}, {"codec": "lz4", "level": 1}, "none"):  # fmt: skip
        with pytest.raises(ValueError, match=r'compression must be \{"codec": "none"\} or'):
            Compression.from_dict(bad)


@given(p=profiles())
def test_profile_file_round_trip(p: CompressionProfile, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("prof") / "p.json"
    path.write_text(json.dumps(p.to_dict()))
    jsonschema.validate(p.to_dict(), PROFILE_SCHEMA)
    q = load_profile(path)
    assert q.levels == p.levels and q.thresholds_mbps == p.thresholds_mbps and q.level_by_count == p.level_by_count


def _doc(**changes):
    d = {"version": 1, "codec": "zstd", "chunk_bytes": 1024,
         "levels": [{"level": 1, "compress_mb_s": 300.0, "ratio": 0.5}, {"level": 3, "compress_mb_s": 100.0, "ratio": 0.4}]}  # fmt: skip
    d.update(changes)
    return d


BAD = [
    (_doc(version=2), "expected version 1 and codec 'zstd', got version 2"),
    (_doc(codec="lz4"), "got version 1 and codec 'lz4'"),
    (_doc(extra=1), r"unexpected fields \['extra'\]"),
    ({"version": 1, "codec": "zstd"}, r"missing fields \['chunk_bytes', 'levels'\]"),
    (_doc(chunk_bytes=0), "chunk_bytes must be an integer >= 1, got 0"),
    (_doc(levels={}), "levels must be a list, got dict"),
    (_doc(levels=[{"level": 1, "ratio": 0.5}]), r"levels\[0\] must be an object of exactly"),
    (_doc(levels=[{"level": 20, "compress_mb_s": 1, "ratio": 0.5}]), r"levels\[0\].level must be an integer 1..19, got 20"),
    (_doc(levels=[{"level": 1, "compress_mb_s": -1, "ratio": 0.5}]), r"compress_mb_s must be a finite number > 0, got -1"),
    (_doc(levels=[{"level": 1, "compress_mb_s": 1, "ratio": 1.5}]), "ratio 1.5 > 1: it expands the data"),
    (_doc(levels=[{"level": 3, "compress_mb_s": 100, "ratio": 0.4}, {"level": 1, "compress_mb_s": 300, "ratio": 0.5}]),
     r"must be a ladder .*got level 3 \(100 MB/s, ratio 0.4\) then level 1"),
    (_doc(levels=[{"level": 1, "compress_mb_s": 100, "ratio": 0.5}, {"level": 2, "compress_mb_s": 300, "ratio": 0.4}]),
     "must be a ladder"),
    ([], "expected a JSON object, got list"),
]  # fmt: skip


@pytest.mark.parametrize("doc, match", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_profiles_say_what_was_expected(doc, match, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=match) as err:
        load_profile(path)
    assert str(path) in str(err.value)


def test_unreadable_profile(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read it as JSON"):
        load_profile(tmp_path / "x.json")
    with pytest.raises(ConfigError, match="cannot read it as JSON"):
        load_profile(tmp_path / "missing.json")


def test_shipped_profile_loads_validates_and_says_how_it_was_measured() -> None:
    p = default_profile()
    assert profile_from(None) is p and p.levels
    jsonschema.Draft202012Validator.check_schema(PROFILE_SCHEMA)
    jsonschema.validate(p.to_dict(), PROFILE_SCHEMA)
    assert p.measured_on["command"].startswith("bwp bench compression") and p.measured_on["machine"]
    assert choose(math.inf, p) == NONE and _level(choose(1.0, p)) == max(lv.level for lv in p.levels)


def test_settings_name_the_profile_and_horizon(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("BWP_COMPRESSION_PROFILE", raising=False)
    monkeypatch.delenv("BWP_COMPRESSION_HORIZON", raising=False)
    s = load_settings()
    assert s.compression_profile is None and s.compression_horizon == 10
    assert profile_from(s.compression_profile) is default_profile()
    monkeypatch.setenv("BWP_COMPRESSION_PROFILE", str(tmp_path / "missing.json"))
    with pytest.raises(
        ConfigError, match="BWP_COMPRESSION_PROFILE points at .*missing.json, which is not a readable file"
    ):
        load_settings()
    monkeypatch.delenv("BWP_COMPRESSION_PROFILE")
    monkeypatch.setenv("BWP_COMPRESSION_HORIZON", "0")
    with pytest.raises(ConfigError, match="compression_horizon"):
        load_settings()
