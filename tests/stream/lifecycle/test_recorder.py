"""bwp record: hourly parts, manifests, invalid records kept, restart without loss or duplicates."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from stream.core.errors import BwpError
from stream.core.jsonl import read_jsonl
from stream.lifecycle.recorder import Recorder
from stream.lifecycle.recordings import hour_of, manifest_path, offset_runs, recording_files

HOUR_MS = 3_600_000
START = 1_764_000_000_000 - (1_764_000_000_000 % HOUR_MS)  # 2025-11-24T16:00Z, on an hour boundary


def test_ranges_and_hour():
    assert offset_runs([5, 3, 4, 9, 10, 12]) == [[3, 5], [9, 10], [12, 12]]
    assert offset_runs([]) == []
    assert hour_of(START) == ("2025-11-24", "16")
    assert hour_of(START + HOUR_MS - 1) == ("2025-11-24", "16")
    assert hour_of(START + HOUR_MS) == ("2025-11-24", "17")


def test_recording_files_skip_manifests_and_invalid(tmp_path):
    d = tmp_path / "2025-11-24"
    d.mkdir()
    for name in ("16.part-0001.jsonl.gz", "16.part-0001.manifest.json", "16.part-0001.invalid.jsonl.gz", "x.jsonl"):
        (d / name).write_bytes(b"")
    assert [p.name for p in recording_files(tmp_path)] == ["16.part-0001.jsonl.gz", "x.jsonl"]


def test_scan_removes_part_without_manifest(tmp_path):
    from stream.core.settings import load_settings

    d = tmp_path / "2025-11-24"
    d.mkdir()
    (d / "16.part-0001.jsonl.gz").write_bytes(gzip.compress(b'{"x":1}\n'))
    (d / ".16.part-0002.jsonl.gz.abc.tmp").write_bytes(b"partial")
    rec = Recorder(load_settings(), tmp_path, progress=None)
    rec.scan()
    assert rec.stats.orphans_removed == 1
    assert list(d.iterdir()) == []
    assert rec._part_no[("2025-11-24", "16")] == 1  # numbering never reuses a name


# --- integration -----------------------------------------------------------------------------
def _produce(settings, values: list[tuple[bytes, bytes]]) -> None:
    from confluent_kafka import Producer

    p = Producer(settings.confluent_config(**{"linger.ms": 5}))
    for key, value in values:
        p.produce(settings.telemetry_topic, key=key, value=value)
    assert p.flush(20) == 0


def _records(n_links: int, steps: int, start_ms: int, step_ms: int, seed: int = 1):
    from simulator.generator import generate_records

    return list(generate_records("internet", n_links, steps, seed, step_ms=step_ms, start_ms=start_ms))


def _recorded(out: Path) -> list[tuple[str, int]]:
    return [(r.link_id, r.seq) for r in read_jsonl(recording_files(out))]


def _run(settings, out, group, **kw) -> Recorder:
    rec = Recorder(settings, out, group=group, idle_exit_s=kw.pop("idle_exit_s", 3.0), progress=None, **kw)
    rec.run(install_signals=False)
    return rec


@pytest.mark.integration
def test_records_hourly_parts_with_manifest_and_invalid(bwp_settings, tmp_path):
    # 4 links x 30 steps of 4 minutes = 2 hours of telemetry
    recs = _records(4, 30, START, 240_000)
    bad = [(b"x", b"not json"), (b"y", b'{"link_id":"y","seq":-1}')]
    _produce(bwp_settings, [(r.link_id.encode(), r.to_bytes()) for r in recs] + bad)
    out = tmp_path / "rec"
    rec = _run(bwp_settings, out, bwp_settings.consumer_group + "-rec")
    assert rec.stats.recorded == len(recs) and rec.stats.invalid == 2

    parts = recording_files(out)
    assert {p.parent.name + "/" + p.name.split(".")[0] for p in parts} == {"2025-11-24/16", "2025-11-24/17"}
    got = _recorded(out)
    assert sorted(got) == sorted((r.link_id, r.seq) for r in recs)
    for p in parts:  # every valid record sits in the file of its ts_ms hour
        assert {hour_of(r.ts_ms)[1] for r in read_jsonl(p)} == {p.name[:2]}
    # the raw bytes as produced
    raw_lines = {line for p in parts for line in gzip.decompress(p.read_bytes()).splitlines()}
    assert {r.to_bytes() for r in recs} == raw_lines

    # manifests: offsets cover every message exactly once
    seen = []
    for man in sorted(out.rglob("*.manifest.json")):
        m = json.loads(man.read_text())
        assert m["file"] is None or (man.parent / m["file"]).is_file()
        assert m["invalid_file"] is None or (man.parent / m["invalid_file"]).is_file()
        assert m["file"] or m["invalid_file"]
        for parts_ in m["offsets"].values():
            for p, ranges in parts_.items():
                seen += [(int(p), o) for a, b in ranges for o in range(a, b + 1)]
    assert len(seen) == len(set(seen)) == len(recs) + 2

    invalid = [
        json.loads(line)
        for f in out.rglob("*.invalid.jsonl.gz")
        for line in gzip.decompress(f.read_bytes()).splitlines()
    ]
    assert sorted(i["error"].split(":")[0] for i in invalid) == ["invalid_json", "out_of_range"]
    assert {i["value_b64"] for i in invalid} == {"bm90IGpzb24=", "eyJsaW5rX2lkIjoieSIsInNlcSI6LTF9"}


@pytest.mark.integration
def test_restart_after_crash_before_commit_neither_loses_nor_duplicates(bwp_settings, tmp_path):
    group = bwp_settings.consumer_group + "-rec"
    out = tmp_path / "rec"
    first = _records(5, 20, START, 60_000, seed=2)
    _produce(bwp_settings, [(r.link_id.encode(), r.to_bytes()) for r in first])

    class CrashBeforeCommit(Recorder):
        def _commit(self) -> None:  # the files are durable, then the process "dies"
            pass

    crashed = CrashBeforeCommit(bwp_settings, out, group=group, idle_exit_s=1.5, progress=None)
    crashed.run(install_signals=False)
    assert crashed.stats.recorded == len(first)

    # a flush that died between renaming its data part and its manifest
    day = next(p for p in out.iterdir() if p.is_dir())
    orphan = day / "16.part-0099.jsonl.gz"
    orphan.write_bytes(gzip.compress(first[0].to_bytes() + b"\n"))

    second = _records(5, 10, START + 20 * 60_000, 60_000, seed=3)
    _produce(bwp_settings, [(r.link_id.encode(), r.to_bytes()) for r in second])
    rec = _run(bwp_settings, out, group, idle_exit_s=1.5)
    assert rec.stats.orphans_removed == 1 and not orphan.exists()
    assert rec.stats.duplicates_skipped == len(first)  # re-read (not committed) but skipped
    assert rec.stats.recorded == len(second)
    lines = sorted(line for p in recording_files(out) for line in gzip.decompress(p.read_bytes()).splitlines())
    assert lines == sorted(r.to_bytes() for r in first + second)  # each produced record exactly once

    # a clean third run from committed offsets reads nothing new
    again = _run(bwp_settings, out, group, idle_exit_s=1.0)
    assert again.stats.consumed == 0 and again.stats.recorded == 0
    assert manifest_path(recording_files(out)[0]).is_file()


class _Msg:
    def __init__(self, topic, partition, offset, value, ts=0):
        self._t, self._p, self._o, self._v, self._ts = topic, partition, offset, value, ts

    def topic(self):
        return self._t

    def partition(self):
        return self._p

    def offset(self):
        return self._o

    def value(self):
        return self._v

    def timestamp(self):
        return (1, self._ts) if self._ts else (0, -1)

    def error(self):
        return None


class _FakeConsumer:
    """Hands out prepared messages, records commits (no broker)."""

    def __init__(self, msgs, per_call=1000):
        self.msgs = list(msgs)
        self.per_call = per_call
        self.commits = []
        self.closed = False

    def subscribe(self, topics, on_assign=None, on_revoke=None):
        on_assign(self, [])

    def consume(self, num_messages, timeout):
        k = min(num_messages, self.per_call)
        out, self.msgs = self.msgs[:k], self.msgs[k:]
        return out

    def commit(self, offsets, asynchronous):
        self.commits.append({(tp.topic, tp.partition): tp.offset for tp in offsets})

    def close(self):
        self.closed = True


def test_max_records_lock_and_commit_offsets_without_broker(tmp_path):
    from stream.core.settings import load_settings

    recs = _records(2, 10, START, 1000)
    msgs = [_Msg("t", i % 2, i // 2, r.to_bytes()) for i, r in enumerate(recs)]
    fake = _FakeConsumer(msgs)
    out = tmp_path / "rec"
    s = load_settings(telemetry_topic="t")
    holder = Recorder(s, out, progress=None)
    holder._lock()
    try:
        with pytest.raises(BwpError, match="already writing"):
            Recorder(s, out, progress=None, consumer_factory=lambda cfg: fake).run(install_signals=False)
    finally:
        holder._held_lock.release()
    rec = Recorder(s, out, progress=None, max_records=7, idle_exit_s=5, consumer_factory=lambda cfg: fake)
    rec.run(install_signals=False)
    assert rec.stats.recorded == 7 and len(_recorded(out)) == 7 and fake.closed
    # offsets committed = next offset to read, per partition: 7 messages = p0 offsets 0..3, p1 0..2
    assert fake.commits == [{("t", 0): 4, ("t", 1): 3}]
    # a restart that is handed the same messages again (nothing was lost in Kafka) skips the 7
    fake2 = _FakeConsumer(msgs)
    rec2 = Recorder(s, out, progress=None, idle_exit_s=0.3, consumer_factory=lambda cfg: fake2)
    rec2.run(install_signals=False)
    assert rec2.stats.duplicates_skipped == 7 and rec2.stats.recorded == len(recs) - 7
    assert sorted(_recorded(out)) == sorted((r.link_id, r.seq) for r in recs)


@pytest.mark.integration
def test_sigterm_flushes_and_exits_cleanly(bwp_settings, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    recs = _records(3, 20, START, 1000, seed=4)
    _produce(bwp_settings, [(r.link_id.encode(), r.to_bytes()) for r in recs])
    out = tmp_path / "rec"
    err_path = tmp_path / "stderr.txt"
    from tests.helpers import REPO as repo

    cmd = [
        sys.executable, "-m", "stream.cli", "record", "--out", str(out), "--group", bwp_settings.consumer_group + "-rec",
        "--flush-interval", "300", "--bootstrap", bwp_settings.kafka_bootstrap,
        "--telemetry-topic", bwp_settings.telemetry_topic,
    ]  # fmt: skip
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.PIPE, stderr=err, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while f" {len(recs)} recorded" not in err_path.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, err_path.read_text()
            time.sleep(0.2)
        assert recording_files(out) == []  # everything is still only buffered
        os.kill(proc.pid, signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == 0, err_path.read_text()
    summary = json.loads(stdout)
    assert summary["recorded"] == len(recs) and summary["commits"] == 1
    assert sorted(_recorded(out)) == sorted((r.link_id, r.seq) for r in recs)


def _fake_run(tmp_path, msgs, **kw):
    from stream.core.settings import load_settings

    fake = _FakeConsumer(msgs, per_call=5)
    rec = Recorder(load_settings(telemetry_topic="t"), tmp_path / "rec", progress=None, idle_exit_s=0.2,
                   consumer_factory=lambda cfg: fake, **kw)  # fmt: skip
    rec.run(install_signals=False)
    return rec


def test_closed_hours_are_compacted_into_one_part(tmp_path):
    # hour 16: 3 flushes of 5 records; then hour 17 records 20 min past: hour 16 is closed (10 min grace)
    recs = _records(1, 15, START + 10 * 60_000, 60_000) + _records(1, 5, START + 80 * 60_000, 60_000, seed=9)
    msgs = [_Msg("t", 0, i, r.to_bytes()) for i, r in enumerate(recs)]
    rec = _fake_run(tmp_path, msgs, flush_records=5)
    assert rec.stats.compactions == 1
    day = tmp_path / "rec" / "2025-11-24"
    h16 = sorted(p.name for p in day.glob("16.*"))
    assert h16 == ["16.part-0004.jsonl.gz", "16.part-0004.manifest.json"]
    man = json.loads((day / "16.part-0004.manifest.json").read_text())
    assert man["replaces"] == ["16.part-0001", "16.part-0002", "16.part-0003"]
    assert man["records"] == 15 and man["offsets"] == {"t": {"0": [[0, 14]]}}
    assert [r.to_bytes() for r in read_jsonl(day / "16.part-0004.jsonl.gz")] == [r.to_bytes() for r in recs[:15]]
    assert len(list(day.glob("17.part-*.jsonl.gz"))) == 1  # the open hour is left alone
    assert sorted(_recorded(tmp_path / "rec")) == sorted((r.link_id, r.seq) for r in recs)


def test_compaction_interrupted_after_commit_is_finished_by_the_next_start(tmp_path):
    recs = _records(1, 15, START + 10 * 60_000, 60_000) + _records(1, 5, START + 80 * 60_000, 60_000, seed=9)
    msgs = [_Msg("t", 0, i, r.to_bytes()) for i, r in enumerate(recs)]

    class Crash(Exception):
        pass

    class CrashingRecorder(Recorder):
        def _after_compaction_commit(self):
            raise Crash()

    from stream.core.settings import load_settings

    fake = _FakeConsumer(msgs, per_call=5)
    rec = CrashingRecorder(load_settings(telemetry_topic="t"), tmp_path / "rec", progress=None, flush_records=5,
                           idle_exit_s=0.2, consumer_factory=lambda cfg: fake)  # fmt: skip
    with pytest.raises(Crash):
        rec.run(install_signals=False)
    day = tmp_path / "rec" / "2025-11-24"
    assert len(list(day.glob("16.part-*.jsonl.gz"))) == 4  # merged + the three it replaces
    lines = sorted(
        line for p in recording_files(tmp_path / "rec") for line in gzip.decompress(p.read_bytes()).splitlines()
    )
    assert lines == sorted(r.to_bytes() for r in recs)  # readers still see each record once
    # restart (handed every message again): the replaced parts go, nothing is recorded twice
    rec2 = _fake_run(tmp_path, msgs)
    assert sorted(p.name for p in day.glob("16.*")) == ["16.part-0004.jsonl.gz", "16.part-0004.manifest.json"]
    assert rec2.stats.duplicates_skipped == len(recs) and rec2.stats.recorded == 0
    assert sorted(_recorded(tmp_path / "rec")) == sorted((r.link_id, r.seq) for r in recs)
