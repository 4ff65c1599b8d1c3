"""``bwp bench compression``: a tiny real run writes a profile the worker can load; the corpus and the ladder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stream.bench.compression import MIX, PAGE, generated_corpus, ladder, read_corpus
from stream.cli.main import main
from stream.core.compression import ZSTD_LEVELS, load_profile
from stream.core.errors import DataError


def test_bench_writes_a_loadable_profile(tmp_path, capsys):
    out = tmp_path / "p.json"
    code = main(["bench", "compression", "--corpus-bytes", str(64 * PAGE), "--chunk-bytes", str(16 * PAGE),
                 "--seconds-per-level", "0", "--cores", "2", "--out", str(out)])  # fmt: skip
    assert code == 0
    cap = capsys.readouterr()
    assert "level 19" in cap.err  # progress on stderr
    printed = json.loads(cap.out)
    p = load_profile(out)
    assert p.to_dict() == printed and p.chunk_bytes == 16 * PAGE
    assert {lv.level for lv in p.levels} | {int(d["level"]) for d in p.dropped} == set(ZSTD_LEVELS)
    meta = p.measured_on
    assert (
        meta["cores"] == 2 and meta["command"].startswith("bwp bench compression") and meta["corpus_bytes"] == 64 * PAGE
    )


def test_bench_reads_a_corpus_folder(tmp_path, capsys):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_bytes(b"hello world " * 5000)
    assert main(["bench", "compression", "--corpus", str(tmp_path / "c"), "--seconds-per-level", "0", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["levels"] and res["levels"][0]["ratio"] < 0.1 and str(tmp_path / "c") in res["measured_on"]["corpus"]
    with pytest.raises(DataError, match="holds no data"):
        read_corpus(tmp_path / "empty") if (tmp_path / "empty").mkdir() is None else None


def test_generated_corpus_is_seeded_and_mixed():
    a, b = generated_corpus(200 * PAGE, seed=1), generated_corpus(200 * PAGE, seed=1)
    assert a == b != generated_corpus(200 * PAGE, seed=2) and len(a) == 200 * PAGE
    pages = [a[i : i + PAGE] for i in range(0, len(a), PAGE)]
    zero = sum(p == bytes(PAGE) for p in pages) / len(pages)
    assert abs(zero - MIX["zero"]) < 0.1  # 200 draws of a 20 % share
    assert any(p.startswith(b'{"link_id"') for p in pages)


def test_ladder_drops_expanding_dominated_and_out_of_order_levels():
    m = [
        {"level": 1, "compress_mb_s": 300.0, "ratio": 0.50},
        {"level": 2, "compress_mb_s": 310.0, "ratio": 0.49},  # dominates level 1
        {"level": 3, "compress_mb_s": 100.0, "ratio": 0.45},
        {"level": 4, "compress_mb_s": 150.0, "ratio": 0.46},  # faster than 3 but worse: breaks the ladder
        {"level": 5, "compress_mb_s": 50.0, "ratio": 1.01},  # expands
    ]
    kept, dropped = ladder(m)
    assert [k["level"] for k in kept] == [2, 3]
    reasons = {d["level"]: d["reason"] for d in dropped}
    assert "dominated by level 2" in reasons[1] and "breaks the ladder" in reasons[4] and "ratio >= 1" in reasons[5]
    speeds = np.array([k["compress_mb_s"] for k in kept])
    assert np.all(np.diff(speeds) <= 0)
