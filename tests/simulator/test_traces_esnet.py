"""The esnet-snmp importer (ESnet backbone SNMP traffic): hand-made CSVs, then the real dataset."""

from __future__ import annotations

import calendar
import functools
import gzip
import re
from pathlib import Path

import pytest

from simulator.traces.datasets import (
    DATASETS,
    FORMATS,
    TIME_SPLIT_DATASETS,
    dataset_files,
    import_trace,
    iter_trace_links,
    load_dataset,
)
from stream.cli.main import main
from stream.core.errors import DataError
from stream.core.records import Telemetry
from tests.helpers import TRACES

ALL_IMPUTED = ("latency_ms", "packet_loss", "reliability")
NAME = "esnet-backbone-2018"
T0 = calendar.timegm((2018, 1, 1, 9, 0, 0)) * 1000
HOUR = 3_600_000


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


SAMPLE = (
    "time,in,out\n"
    "2018-01-01 09:00:00,791876956.5,170084509.75\n"
    "2018-01-01 10:00:00,0.0,2e9\n"
    "2018-01-01 11:00:00,,3000000\n"  # empty cell: that hour skipped for 'in' only
    "\n"
    "2018-01-01 13:00:00,1000000,0\n"  # 12:00 missing: a gap in both directions
)


def test_esnet_two_directions_units_and_times(tmp_path):
    p = write(tmp_path / NAME / "ALBQ_DENV.csv.gz", SAMPLE)
    links = dict(iter_trace_links("esnet-snmp", [p]))
    assert list(links) == [f"{NAME}:ALBQ_DENV:in", f"{NAME}:ALBQ_DENV:out"]
    rin, rout = links.values()
    # bits/s -> Mbit/s
    assert [r.bandwidth_mbps for r in rin] == pytest.approx([791.8769565, 0.0, 1.0])
    assert [r.bandwidth_mbps for r in rout] == pytest.approx([170.08450975, 2000.0, 3.0, 0.0])
    assert [r.ts_ms - T0 for r in rin] == [0, HOUR, 4 * HOUR]  # gaps stay gaps in ts_ms
    assert [r.ts_ms - T0 for r in rout] == [0, HOUR, 2 * HOUR, 4 * HOUR]
    assert [r.seq for r in rin] == [0, 1, 2]  # seq counts records, not hours
    assert [r.seq for r in rout] == [0, 1, 2, 3]
    for r in (*rin, *rout):
        assert r.profile == "datacenter" and r.imputed == ALL_IMPUTED
        assert r.latency_ms == 50.0 and r.packet_loss == 0.0
    # reliability = EWMA(0.1) of "bandwidth > 0", as for every trace without probes
    assert [r.reliability for r in rin] == pytest.approx([1.0, 0.9, 0.91])


def test_esnet_plain_csv_outside_a_dataset_and_latency_option(tmp_path):
    p = write(tmp_path / "A-1_B.csv", "time,out,in\n2018-06-01 00:00:00,5e6,1e6\n")
    recs = list(import_trace("esnet-snmp", [p], latency_ms=20))
    assert [(r.link_id, r.bandwidth_mbps) for r in recs] == [
        ("esnet-snmp:A-1_B:in", 1.0),
        ("esnet-snmp:A-1_B:out", 5.0),
    ]
    assert recs[0].ts_ms == calendar.timegm((2018, 6, 1, 0, 0, 0)) * 1000
    assert all(r.latency_ms == 20.0 for r in recs)


@pytest.mark.parametrize(
    "body,lineno,what",
    [
        ("2018-01-01 09:00:00,1,2\n2018-01-01 10:00:00,fast,2\n", 3, r"'in' \(bits/s\) must be a number"),
        ("2018-01-01 09:00:00,1,2\n2018-01-01 10:00:00,1\n", 3, "expected 3 columns"),
        ("2018-01-01 09:00:00,1,nan\n", 2, "finite"),
        ("2018-01-01 09:00:00,-5,2\n", 2, "bandwidth must be in"),
        ("2018-01-01 09:00:00,1e20,2\n", 2, "bandwidth must be in"),
        ("01/01/2018 09:00,1,2\n", 2, "time must be YYYY-MM-DD HH:MM:SS"),
        ("2018-02-30 09:00:00,1,2\n", 2, "time must be YYYY-MM-DD HH:MM:SS"),
        ("2018-01-01 10:00:00,1,2\n2018-01-01 10:00:00,1,2\n", 3, "strictly increase"),
        ("2018-01-01 10:00:00,1,2\n2018-01-01 09:00:00,1,2\n", 3, "strictly increase"),
    ],
)
def test_esnet_bad_input_names_file_and_line(tmp_path, body, lineno, what):
    p = write(tmp_path / "X_Y.csv.gz", "time,in,out\n" + body)
    with pytest.raises(DataError, match=rf"{re.escape(str(p))}:{lineno}: .*{what}"):
        list(import_trace("esnet-snmp", [p]))


def test_esnet_bad_files(tmp_path):
    with pytest.raises(DataError, match=r":1: CSV header lacks \['out'\]"):
        list(import_trace("esnet-snmp", [write(tmp_path / "a.csv", "time,in\n2018-01-01 09:00:00,1\n")]))
    with pytest.raises(DataError, match=r"no samples in column 'out'"):
        list(import_trace("esnet-snmp", [write(tmp_path / "b.csv", "time,in,out\n2018-01-01 09:00:00,1,\n")]))
    not_gzip = tmp_path / "c.csv.gz"
    not_gzip.write_text("time,in,out\n")
    with pytest.raises(DataError, match="cannot read trace file"):
        list(import_trace("esnet-snmp", [not_gzip]))


def test_esnet_dataset_files_skip_summary_and_source(tmp_path):
    folder = tmp_path / NAME
    write(folder / "SOURCE.md", "# not a trace\n")
    write(folder / "links.csv", "year,link,rows\n2018,A_B,2\n")
    write(folder / "A_B.csv.gz", "time,in,out\n2018-01-01 09:00:00,1e6,2e6\n2018-01-01 10:00:00,3e6,4e6\n")
    assert [p.name for p in dataset_files(NAME, tmp_path)] == ["A_B.csv.gz"]
    d = load_dataset(NAME, root=tmp_path)
    assert {k: [r.bandwidth_mbps for r in v] for k, v in d.items()} == {
        f"{NAME}:A_B:in": [1.0, 3.0],
        f"{NAME}:A_B:out": [2.0, 4.0],
    }


def test_esnet_registered_and_time_split():
    assert DATASETS[NAME] == "esnet-snmp" and "esnet-snmp" in FORMATS
    assert {NAME} == set(TIME_SPLIT_DATASETS)
    assert isinstance(TIME_SPLIT_DATASETS, frozenset) and TIME_SPLIT_DATASETS.issubset(DATASETS)


def test_cli_import_esnet_dataset(tmp_path, capsys):
    write(tmp_path / NAME / "links.csv", "year,link\n")
    write(tmp_path / NAME / "A_B.csv.gz", "time,in,out\n2018-01-01 09:00:00,1e6,2e6\n")
    out = tmp_path / "e.jsonl"
    assert main(["import-trace", "--dataset", NAME, "--root", str(tmp_path), "--out", str(out)]) == 0
    assert "wrote 2 records of 2 links (esnet-snmp)" in capsys.readouterr().out
    recs = [Telemetry.from_bytes(line) for line in out.read_bytes().splitlines()]
    assert [(r.link_id, r.bandwidth_mbps, r.profile) for r in recs] == [
        (f"{NAME}:A_B:in", 1.0, "datacenter"),
        (f"{NAME}:A_B:out", 2.0, "datacenter"),
    ]


# --- the real dataset ------------------------------------------------------------------------


@functools.cache
def _real() -> dict[str, list[Telemetry]]:
    if not (TRACES / NAME).is_dir():
        pytest.skip(f"real traces not available: {TRACES / NAME} is missing")
    return load_dataset(NAME, root=TRACES)


@pytest.mark.traces
def test_real_esnet_links_and_counts():
    links = _real()
    assert len(links) == 96  # 48 edges x 2 directions (SOURCE.md)
    assert sum(map(len, links.values())) == 46 * 2 * 8_737 + 2 * 8_736 + 2 * 8_100  # JGI_SACR: 1 h, BNL_NEWY ends early
    for lid, recs in links.items():
        assert re.fullmatch(rf"{NAME}:[A-Za-z0-9-]+_[A-Za-z0-9-]+:(in|out)", lid)
        assert [r.seq for r in recs] == list(range(len(recs)))
        ts = [r.ts_ms for r in recs]
        assert all(a < b and (b - a) % HOUR == 0 for a, b in zip(ts, ts[1:]))
        assert ts[0] == T0
        assert all(r.link_id == lid and r.profile == "datacenter" and r.imputed == ALL_IMPUTED for r in recs)
        assert Telemetry.from_bytes(recs[len(recs) // 2].to_bytes()) == recs[len(recs) // 2]


@pytest.mark.traces
def test_real_esnet_plausible_mbps():
    links = _real()
    means = {lid: sum(r.bandwidth_mbps for r in recs) / len(recs) for lid, recs in links.items()}
    peak = max(r.bandwidth_mbps for recs in links.values() for r in recs)
    assert min(r.bandwidth_mbps for recs in links.values() for r in recs) == 0.0  # zero runs kept
    assert 100_000 < peak < 200_000  # bundles above 100 Gbit/s, nothing absurd (links.csv: 133.66 Gbit/s)
    assert min(means.values()) < 10 and max(means.values()) > 20_000  # Mbit/s idle edges to tens of Gbit/s
    # links.csv: mean in/out Gbit/s of two edges
    assert means[f"{NAME}:AOFA_LOND:in"] == pytest.approx(26_308, rel=1e-3)
    assert means[f"{NAME}:ALBQ_DENV:out"] == pytest.approx(2_526, rel=1e-3)
