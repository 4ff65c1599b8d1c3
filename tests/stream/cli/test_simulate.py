"""``bwp simulate`` / ``bwp import-trace`` and the publisher, without a broker."""

from __future__ import annotations

import threading

import pytest

from simulator.generator import FleetSimulator, generate_records
from simulator.pacing import Pacer, chunk_size
from simulator.publisher import TelemetryPublisher
from stream.cli.main import main
from stream.core.jsonl import read_jsonl
from stream.core.records import Telemetry
from stream.core.settings import load_settings


def test_simulate_out_writes_valid_jsonl(tmp_path, capsys):
    out = tmp_path / "sim.jsonl"
    rc = main(
        [
            "simulate",
            "--links",
            "5",
            "--steps",
            "4",
            "--seed",
            "3",
            "--profile",
            "mixed",
            "--start-ms",
            "0",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    got = list(read_jsonl(out))  # read_jsonl validates every line
    assert got == list(generate_records("mixed", links=5, steps=4, seed=3, start_ms=0))
    assert "wrote 20 records (5 links x 4 steps)" in capsys.readouterr().out


def test_simulate_out_gzip_and_paced(tmp_path):
    out = tmp_path / "sim.jsonl.gz"
    rc = main(
        ["simulate", "--links", "3", "--steps", "2", "--rate", "1000", "--profile", "datacenter", "--out", str(out)]
    )
    assert rc == 0
    recs = list(read_jsonl(out))
    assert len(recs) == 6 and {r.profile for r in recs} == {"datacenter"}


def test_simulate_requires_length(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--links", "2"])
    assert exc.value.code == 2
    assert "--steps" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", ["simulate", "import-trace"])
def test_help_has_examples(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"bwp {cmd}" in text


def test_import_trace_file(tmp_path, capsys):
    trace = tmp_path / "my_trace"
    trace.write_text("0\t1.0\n1.0\t2.0\n2.5\t0.5\n")
    out = tmp_path / "t.jsonl"
    assert main(["import-trace", "--format", "pensieve", str(trace), "--out", str(out), "--unit", "mbyte"]) == 0
    recs = list(read_jsonl(out))
    assert [r.bandwidth_mbps for r in recs] == [8.0, 16.0, 4.0]
    assert [r.ts_ms for r in recs] == [0, 1000, 2500]
    text = capsys.readouterr().out
    assert "wrote 3 records of 1 links" in text
    assert "latency_ms on 3 records (100.0%)" in text


def test_import_trace_errors_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.write_text("0\t1\t2\n")
    assert main(["import-trace", "--format", "pensieve", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert f"{bad}:1" in capsys.readouterr().err
    assert main(["import-trace", "--dataset", "norway-hsdpa-3g", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert main(["import-trace", "--dataset", "nope", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert (
        main(
            [
                "import-trace",
                "--dataset",
                "norway-hsdpa-3g",
                "--root",
                str(tmp_path),
                "--out",
                str(tmp_path / "o.jsonl"),
            ]
        )
        == 2
    )
    assert "not found" in capsys.readouterr().err


# --- publisher with an in-memory stand-in for confluent_kafka.Producer -----------------------


class FakeProducer:
    """Records produce() calls; reports delivery on poll/flush; can fail some or fill up."""

    def __init__(self, fail_every: int = 0, full_once: bool = False) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.pending: list = []
        self.fail_every = fail_every
        self.full_once = full_once

    def produce(self, topic, value, key, on_delivery):
        if self.full_once:
            self.full_once = False
            raise BufferError("queue full")
        self.sent.append((topic, key, value))
        self.pending.append((len(self.sent), on_delivery))

    def poll(self, timeout):
        for n, cb in self.pending:
            cb("broker down" if self.fail_every and n % self.fail_every == 0 else None, None)
        served = len(self.pending)
        self.pending = []
        return served

    def flush(self, timeout):
        self.poll(0)
        return 0


def test_publisher_publishes_steps_with_keys_and_counts():
    fake = FakeProducer(full_once=True)
    pub = TelemetryPublisher(load_settings(), producer=fake)
    sim = FleetSimulator("mixed", 4, seed=1, start_ms=0)
    stats = pub.publish_paced(sim, steps=3, rate=None)
    assert pub.flush(1.0) == 0
    assert stats.records == 12 and stats.steps == 3 and not stats.stopped
    assert pub.produced == pub.delivered == 12 and pub.failed == 0
    assert {t for t, _, _ in fake.sent} == {"bwp.telemetry"}
    expected = list(generate_records("mixed", links=4, steps=3, seed=1, start_ms=0))
    assert [Telemetry.from_bytes(v) for _, _, v in fake.sent] == expected
    assert [k for _, k, _ in fake.sent] == [r.link_id.encode() for r in expected]


def test_publisher_counts_failures_and_publish_records():
    fake = FakeProducer(fail_every=2)
    pub = TelemetryPublisher(load_settings(), topic="t", producer=fake)
    recs = list(generate_records("internet", links=3, steps=2, seed=0, start_ms=0))
    assert pub.publish(recs) == 6
    pub.flush(1.0)
    assert (pub.delivered, pub.failed) == (3, 3)
    assert pub.errors[0] == "broker down"


class ClosableProducer(FakeProducer):
    """A FakeProducer with librdkafka's ``close``; ``stuck`` records never get delivered."""

    def __init__(self, stuck: int = 0) -> None:
        super().__init__()
        self.stuck = stuck
        self.closed = False

    def flush(self, timeout):
        self.poll(0)
        return self.stuck

    def close(self):
        self.closed = True
        return True


def test_publisher_close_releases_the_client_only_once_all_is_delivered():
    recs = list(generate_records("internet", links=2, steps=1, seed=0, start_ms=0))
    done, stuck = ClosableProducer(), ClosableProducer(stuck=2)
    for fake, left in ((done, 0), (stuck, 2)):
        pub = TelemetryPublisher(load_settings(), producer=fake)
        pub.publish(recs)
        assert pub.close(0.1) == left
    assert done.closed and not stuck.closed  # closing would wait for the stuck ones again
    assert TelemetryPublisher(load_settings(), producer=FakeProducer()).close() == 0  # no close(): flushed only


def test_publish_paced_stops_on_event():
    stop = threading.Event()
    stop.set()
    pub = TelemetryPublisher(load_settings(), producer=FakeProducer())
    stats = pub.publish_paced(FleetSimulator("internet", 2, seed=0, start_ms=0), steps=None, rate=10.0, stop_event=stop)
    assert stats.stopped and stats.records == 0


def test_pacer_and_chunks():
    assert chunk_size(1000, None) == 1000
    assert chunk_size(1000, 50_000) == 500
    assert chunk_size(10, 5) == 1
    assert Pacer(None).wait(10**9)  # unpaced never sleeps
    with pytest.raises(ValueError):
        Pacer(0)


# --- against the real embedded broker (session stack from conftest.py) ----------------------


def _consume(settings, n: int, timeout_s: float = 30.0) -> list:
    import time

    from confluent_kafka import Consumer

    c = Consumer(
        settings.confluent_config(**{"group.id": f"{settings.consumer_group}-check", "auto.offset.reset": "earliest"})
    )
    c.subscribe([settings.telemetry_topic])
    got = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < n and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is not None and msg.error() is None:
                got.append((msg.key(), Telemetry.from_bytes(msg.value())))
    finally:
        c.close()
    return got


@pytest.mark.integration
def test_simulate_publishes_to_kafka(bwp_settings, capsys):
    s = bwp_settings
    argv = ["simulate", "--links", "6", "--steps", "5", "--seed", "2", "--start-ms", "0"]
    argv += ["--bootstrap", s.kafka_bootstrap, "--telemetry-topic", s.telemetry_topic]
    assert main(argv) == 0
    assert "delivered 30, failed 0" in capsys.readouterr().out
    got = _consume(s, 30)
    expected = list(generate_records("mixed", links=6, steps=5, seed=2, start_ms=0))
    assert sorted((r.link_id, r.seq) for _, r in got) == sorted((r.link_id, r.seq) for r in expected)
    assert all(k == r.link_id.encode() for k, r in got)
    assert {(r.link_id, r.seq): r for _, r in got} == {(r.link_id, r.seq): r for r in expected}
