"""bwp replay: ordering, time filters, timing, namespaces, and a real publish through Kafka."""

from __future__ import annotations

import json

import pytest

from stream.core.errors import ConfigError, DataError
from stream.core.jsonl import write_jsonl
from stream.core.records import Telemetry
from stream.core.settings import load_settings, namespaced
from stream.lifecycle.recordings import _groups, iter_sorted, scan_files
from stream.lifecycle.replay import parse_speed, parse_time, replay

T0 = 1_764_000_000_000


def rec(link: str, seq: int, ts: int, bw: float = 10.0) -> Telemetry:
    return Telemetry(link, seq, ts, 1.0, bw, 0.0, 1.0, "datacenter")


def test_namespaced_maps_topics_group_and_prefix():
    s = load_settings()
    ns = namespaced(s, "replay1")
    assert ns.telemetry_topic == "replay1.bwp.telemetry"
    assert ns.decisions_topic == "replay1.bwp.decisions"
    assert ns.dlq_topic == "replay1.bwp.telemetry.dlq"
    assert ns.consumer_group == "replay1.bwp-worker"
    assert ns.key_prefix == "replay1:bwp"
    assert ns.kafka_bootstrap == s.kafka_bootstrap and ns.model_dir == s.model_dir
    assert namespaced(s, None) is s and namespaced(s, "") is s
    for bad in ("a b", "x/y", "n" * 65, "ä"):
        with pytest.raises(ConfigError):
            namespaced(s, bad)


def test_parse_time_and_speed():
    assert parse_time("2025-11-24T16:00:00Z") == 1_764_000_000_000
    assert parse_time("2025-11-24T16:00:00") == 1_764_000_000_000  # naive = UTC
    assert parse_time("2025-11-24T17:00:00+01:00") == 1_764_000_000_000
    assert parse_time("1764000000000") == 1_764_000_000_000
    assert parse_time(None) is None
    with pytest.raises(ConfigError):
        parse_time("yesterday")
    assert parse_speed("max") is None and parse_speed("10") == 10.0 and parse_speed("0.5") == 0.5
    for bad in ("0", "-1", "fast"):
        with pytest.raises(ConfigError):
            parse_speed(bad)


def _files(tmp_path):
    # two overlapping files (a recording's parts of one hour) and one later, separate file
    a = [rec("l1", s, T0 + s * 1000) for s in range(0, 20, 2)] + [rec("l2", s, T0 + s * 1000) for s in range(10)]
    b = [rec("l1", s, T0 + s * 1000) for s in range(1, 20, 2)]
    c = [rec("l1", s, T0 + s * 1000) for s in range(100, 105)]
    write_jsonl(tmp_path / "d" / "a.jsonl.gz", a)
    write_jsonl(tmp_path / "d" / "sub" / "b.jsonl", b)
    write_jsonl(tmp_path / "c.jsonl", c)
    return a + b + c


def test_iter_sorted_merges_overlapping_files_in_ts_seq_order(tmp_path):
    allr = _files(tmp_path)
    infos = scan_files([tmp_path / "d", tmp_path / "c.jsonl"])
    assert len(_groups(infos)) == 2  # a+b overlap, c is later
    total, it = iter_sorted([tmp_path / "d", tmp_path / "c.jsonl"])
    got = list(it)
    assert total == len(allr) == len(got)
    assert got == sorted(allr, key=lambda r: (r.ts_ms, r.seq))
    # per link, seq increases
    for lid in ("l1", "l2"):
        seqs = [r.seq for r in got if r.link_id == lid]
        assert seqs == sorted(seqs)


def test_iter_sorted_time_filter(tmp_path):
    _files(tmp_path)
    _, it = iter_sorted([tmp_path], t_from=T0 + 5_000, t_to=T0 + 12_000)
    got = list(it)
    assert got and all(T0 + 5_000 <= r.ts_ms <= T0 + 12_000 for r in got)
    assert len(got) == 8 + 5  # l1 seqs 5..12, l2 seqs 5..9


class FakeProducer:
    def __init__(self, cfg):
        self.sent = []

    def produce(self, topic, value, key, on_delivery):
        self.sent.append((topic, key, value))
        on_delivery(None, None)

    def poll(self, t):
        return 0

    def flush(self, t):
        return 0


def test_replay_timing_scaled_by_speed(tmp_path):
    recs = [rec("l1", s, T0 + s * 2000) for s in range(6)]  # 10 s of telemetry
    write_jsonl(tmp_path / "x.jsonl", recs)
    slept = []
    made = []

    def factory(cfg):
        made.append(FakeProducer(cfg))
        return made[-1]

    now = [0.0]

    def sleep(dt):
        slept.append(dt)
        now[0] += dt

    s = load_settings(telemetry_topic="tt")
    st = replay(s, [tmp_path], speed=10.0, progress=None, producer_factory=factory, sleep=sleep, clock=lambda: now[0])
    assert st.sent == 6 and st.failed == 0
    assert slept == pytest.approx([0.2] * 5)  # 2 s gaps at 10x
    assert [json.loads(v)["seq"] for _, _, v in made[0].sent] == list(range(6))
    assert {t for t, _, _ in made[0].sent} == {"tt"} and made[0].sent[0][1] == b"l1"
    slept.clear()
    replay(s, [tmp_path], speed=None, progress=None, producer_factory=factory, sleep=sleep, clock=lambda: now[0])
    assert slept == []


def test_replay_nothing_in_range(tmp_path):
    write_jsonl(tmp_path / "x.jsonl", [rec("l1", 0, T0)])
    with pytest.raises(DataError, match="no telemetry records"):
        replay(load_settings(), [tmp_path], t_from=T0 + 1, progress=None, producer_factory=FakeProducer)


@pytest.mark.integration
def test_replay_cli_into_a_namespace(bwp_settings, tmp_path):
    from stream.cli.main import main
    from stream.core.settings import namespaced
    from tests.helpers.pipeline import TopicReader

    recs = [rec(f"lk-{k}", s, T0 + s * 1000, bw=float(s)) for s in range(20) for k in range(5)]
    write_jsonl(tmp_path / "r.jsonl.gz", recs)
    rc = main([
        "replay", str(tmp_path), "--speed", "max", "--namespace", "rp1", "--json",
        "--bootstrap", bwp_settings.kafka_bootstrap, "--telemetry-topic", bwp_settings.telemetry_topic,
        "--decisions-topic", bwp_settings.decisions_topic, "--dlq-topic", bwp_settings.dlq_topic,
    ])  # fmt: skip
    assert rc == 0
    ns = namespaced(bwp_settings, "rp1")
    reader = TopicReader(ns, ns.telemetry_topic, partitions=bwp_settings.partitions)
    try:
        msgs = reader.poll_until(lambda m: len(m) >= len(recs), timeout_s=20)
        assert len(reader.drain(0.5)) == len(recs)
    finally:
        reader.close()
    by_link: dict[str, list[tuple[int, int]]] = {}
    for m in msgs:
        r = Telemetry.from_bytes(m.value())
        assert m.key() == r.link_id.encode()
        by_link.setdefault(r.link_id, []).append((m.partition(), r.seq))
    for _lid, items in by_link.items():
        assert len({p for p, _ in items}) == 1  # one link, one partition
        assert [s for _, s in items] == list(range(20))  # per-link order kept
    # a worker in the same namespace decides on them without touching the live topics or keys
    import redis

    from tests.helpers.pipeline import WorkerProcess

    worker = WorkerProcess(bwp_settings, tmp_path / "worker.log", extra=["--namespace", "rp1"]).start()
    dec = TopicReader(ns, ns.decisions_topic, partitions=bwp_settings.partitions)
    try:
        got = dec.poll_until(lambda m: len(m) >= 5 * 11 or not worker.alive(), timeout_s=60)
        assert len(dec.drain(0.5)) == 5 * 11, worker.log_tail()  # 20 states - 9 to fill a window, 5 links
    finally:
        dec.close()
        worker.stop()
    assert {json.loads(m.value())["link_id"] for m in got} == {f"lk-{k}" for k in range(5)}
    r = redis.Redis.from_url(bwp_settings.redis_url)
    try:
        keys = [k.decode() for k in r.keys("*")]
    finally:
        r.close()
    assert keys and all(k.startswith("rp1:bwp:") for k in keys), keys
    for topic in (bwp_settings.telemetry_topic, bwp_settings.decisions_topic):
        live = TopicReader(bwp_settings, topic, partitions=bwp_settings.partitions)
        try:
            assert live.drain(0.5) == []
        finally:
            live.close()
