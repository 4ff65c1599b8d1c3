"""Real-trace importers: unit conversions on small hand-made files, then the real datasets."""

from __future__ import annotations

import calendar
import functools
import math
import re
from pathlib import Path

import pytest

from simulator.traces.datasets import DATASETS, import_trace, iter_trace_links, load_dataset
from stream.core.errors import DataError
from stream.core.records import Telemetry
from tests.helpers import TRACES

ALL_IMPUTED = ("latency_ms", "packet_loss", "reliability")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- pensieve ------------------------------------------------------------------------------


def test_pensieve_mbit_times_and_fills(tmp_path):
    p = write(tmp_path / "trace_a", "0.0\t1.5\n0.5\t2.0\n\n1.7\t0\n")
    recs = list(import_trace("pensieve", [p]))
    assert [r.bandwidth_mbps for r in recs] == [1.5, 2.0, 0.0]
    assert [r.ts_ms for r in recs] == [0, 500, 1700]  # irregular steps kept
    assert [r.seq for r in recs] == [0, 1, 2]
    assert {r.link_id for r in recs} == {"pensieve:trace_a"}
    assert all(r.imputed == ALL_IMPUTED and r.profile == "internet" for r in recs)
    assert all(r.latency_ms == 50.0 and r.packet_loss == 0.0 for r in recs)
    # reliability = EWMA(0.1) of "bandwidth > 0", starting at 1
    assert [r.reliability for r in recs] == pytest.approx([1.0, 1.0, 0.9])


def test_pensieve_units_and_options(tmp_path):
    p = write(tmp_path / "t", "0\t0.5\n1\t2.25\n")
    mbyte = list(import_trace("pensieve", [p], unit="mbyte", latency_ms=80, start_ms=1_000_000))
    assert [r.bandwidth_mbps for r in mbyte] == [4.0, 18.0]
    assert [r.ts_ms for r in mbyte] == [1_000_000, 1_001_000]
    assert all(r.latency_ms == 80.0 for r in mbyte)
    kbit = list(import_trace("pensieve", [p], unit="kbit"))
    assert [r.bandwidth_mbps for r in kbit] == pytest.approx([0.0005, 0.00225])


def test_puffer_default_unit_is_megabytes(tmp_path):
    p = write(tmp_path / "puffer-subset" / "puffer_1" / "trace+x=_1", "0\t1.0\n2.0\t0.5\n")
    recs = list(import_trace("pensieve", [p]))
    assert [r.bandwidth_mbps for r in recs] == [8.0, 4.0]
    assert recs[0].link_id == "puffer-subset:puffer_1.trace_x__1"
    assert [r.bandwidth_mbps for r in import_trace("pensieve", [p], unit="mbit")] == [1.0, 0.5]


@pytest.mark.parametrize(
    "text,lineno,what",
    [
        ("0\t1\n1\t2\t3\n", 2, "expected 2 columns"),
        ("0\t1\n1\tfast\n", 2, "throughput must be a number"),
        ("0\t1\n2\t1\n1\t1\n", 3, "non-decreasing"),
        ("0\tnan\n", 1, "finite"),
        ("0\t-1\n", 1, "bandwidth must be in"),
    ],
)
def test_pensieve_bad_input_names_file_and_line(tmp_path, text, lineno, what):
    p = write(tmp_path / "bad", text)
    with pytest.raises(DataError, match=rf"{re.escape(str(p))}:{lineno}: .*{what}"):
        list(import_trace("pensieve", [p]))


# --- mahimahi ------------------------------------------------------------------------------


def test_mahimahi_bins_exact_mbps(tmp_path):
    # 1 packet (1500 B) per 1000 ms bin = 12 000 bit/s = 0.012 Mbit/s.
    p = write(tmp_path / "Cell.down", "0\n0\n5\n999\n1000\n1500\n2999\n3000\n")
    recs = list(import_trace("mahimahi", [p]))
    # t_last = 3000 ms -> 3 whole bins; the packet at 3000 starts a bin the trace never finishes.
    assert [r.bandwidth_mbps for r in recs] == pytest.approx([0.048, 0.024, 0.012])
    assert [r.ts_ms for r in recs] == [1000, 2000, 3000]  # bin end
    assert recs[0].link_id == "mahimahi:Cell.down"


def test_mahimahi_half_second_bins_and_outage(tmp_path):
    p = write(tmp_path / "x.up", "0\n0\n5\n999\n1000\n1500\n2999\n3000\n")
    recs = list(import_trace("mahimahi", [p], bin_ms=500))
    # 3 packets / 0.5 s = 3 * 12000 / 0.5 bit/s = 0.072 Mbit/s; the empty bin is an outage (0).
    assert [r.bandwidth_mbps for r in recs] == pytest.approx([0.072, 0.024, 0.024, 0.024, 0.0, 0.024])
    assert [r.ts_ms for r in recs] == [500, 1000, 1500, 2000, 2500, 3000]
    assert [r.reliability for r in recs][-2:] == pytest.approx([0.9, 0.91])


@pytest.mark.parametrize(
    "text,lineno,what",
    [
        ("0\n12a\n", 2, "one integer millisecond"),
        ("0\n5\n3\n2000\n", 3, "non-decreasing"),
        ("0\n10\n", None, "shorter"),
    ],
)
def test_mahimahi_bad_input(tmp_path, text, lineno, what):
    p = write(tmp_path / "bad.up", text)
    where = f"{re.escape(str(p))}:{lineno}" if lineno else re.escape(str(p))
    with pytest.raises(DataError, match=rf"{where}: .*{what}"):
        list(import_trace("mahimahi", [p]))


# --- ucc5g ---------------------------------------------------------------------------------

UCC_HEADER = (
    "Timestamp,Longitude,Latitude,Speed,Operatorname,CellID,NetworkMode,RSRP,RSRQ,SNR,CQI,RSSI,"
    "DL_bitrate,UL_bitrate,State,PINGAVG,PINGMIN,PINGMAX,PINGSTDEV,PINGLOSS,CELLHEX,NODEHEX,LACHEX,"
    "RAWCELLID,NRxRSRP,NRxRSRQ"
)


def ucc_row(ts: str, dl: str, ping: str = "-", loss: str = "-") -> str:
    return f"{ts},-8.5,51.9,2,B,1,LTE,-89,-12,1.0,10,-89,{dl},0,D,{ping},-,-,-,{loss},1,53B22,9CBA,8776,-89.0,-13.0"


def test_ucc5g_dedup_units_pings(tmp_path):
    p = write(
        tmp_path / "Driving" / "B_x.csv",
        "\n".join(
            [
                UCC_HEADER,
                ucc_row("2020.02.14_09.38.22", "1000"),
                ucc_row("2020.02.14_09.38.22", "3000"),  # same second: averaged
                ucc_row("2020.02.14_09.38.23", "20000", "40.0", "20.0"),
                ucc_row("2020.02.14_09.38.25", "0"),
                ucc_row("2020.02.14_09.38.26", "5000", "-", "100.0"),
            ]
        )
        + "\n",
    )
    recs = list(import_trace("ucc5g", [p]))
    t0 = calendar.timegm((2020, 2, 14, 9, 38, 22)) * 1000
    assert [r.ts_ms - t0 for r in recs] == [0, 1000, 3000, 4000]
    assert [r.bandwidth_mbps for r in recs] == [2.0, 20.0, 0.0, 5.0]  # kbit/s -> Mbit/s
    # latency: back-filled from the first ping, then measured, then carried forward.
    assert [r.latency_ms for r in recs] == [40.0, 40.0, 40.0, 40.0]
    assert [r.packet_loss for r in recs] == [0.0, 0.2, 0.2, 1.0]
    # reliability = EWMA(0.2) of ping success at ping rows
    assert [r.reliability for r in recs] == pytest.approx([1.0, 0.96, 0.96, 0.768])
    assert recs[0].imputed == ALL_IMPUTED
    assert recs[1].imputed == ()
    assert recs[2].imputed == ALL_IMPUTED
    assert recs[3].imputed == ("latency_ms",)  # 100 % loss: no RTT, but loss was measured


def test_ucc5g_wrong_column_count(tmp_path):
    p = write(
        tmp_path / "b.csv", UCC_HEADER + "\n" + ucc_row("2020.02.14_09.38.22", "1") + "\n2020.02.14_09.38.23,1,2\n"
    )
    with pytest.raises(DataError, match=rf"{re.escape(str(p))}:3: expected 26 columns"):
        list(import_trace("ucc5g", [p]))


def test_ucc5g_bad_timestamp(tmp_path):
    p = write(tmp_path / "b.csv", UCC_HEADER + "\n" + ucc_row("14/02/2020 09:38", "1") + "\n")
    with pytest.raises(DataError, match=r":2: Timestamp must be"):
        list(import_trace("ucc5g", [p]))


# --- 5gophers ------------------------------------------------------------------------------


def test_5gophers_runs_rtt_and_mobility(tmp_path):
    base = tmp_path / "All-Carriers"
    thr = write(
        base / "01-Throughput" / "data.csv",
        "protocol,carrier,num_tcp_conn,server_location,run_num,seq_num,throughput_mbps\n"
        "TCP,SPRINT,1,US-East,1,1,2.5\n"
        "TCP,SPRINT,1,US-East,1,0,1.0\n"
        "TCP,VERIZON,8,US-West,2,0,900\n",
    )
    write(
        base / "02-Round-Trip-Times" / "data.csv",
        "rtt_ms,carrier,server_location\n40,SPRINT,US-East\n50,SPRINT,US-East\n90,SPRINT,US-West\n100,VERIZON,US-East\n",
    )
    walk = write(
        base / "03-User-Mobility" / "walking-trace.csv",
        "protocol,num_tcp_conn,seq_num,anonymized_mCid,radio_type,throughput_mbps,nrStatus,primitive_handoff_type\n"
        "TCP,8,1,3,4G,92.1,NOT_RESTRICTED,\nTCP,8,2,3,5G,150,NOT_RESTRICTED,\n",
    )
    drive = write(
        base / "03-User-Mobility" / "car-driving-trace-1.csv",
        "protocol,num_tcp_conn,seq_num,Sprint_throughput_mbps,TMobile_throughput_mbps,Verizon_throughput_mbps\n"
        "TCP,8,0,25.5,145.0,53.0\nTCP,8,1,65.0,87.0,82.0\n",
    )
    links = dict(iter_trace_links("5gophers", [thr, walk, drive]))
    assert sorted(links) == [
        "5gophers:driving-1.SPRINT",
        "5gophers:driving-1.TMOBILE",
        "5gophers:driving-1.VERIZON",
        "5gophers:throughput.SPRINT.TCP.1conn.US-East.run1",
        "5gophers:throughput.VERIZON.TCP.8conn.US-West.run2",
        "5gophers:walking",
    ]
    run1 = links["5gophers:throughput.SPRINT.TCP.1conn.US-East.run1"]
    assert [(r.seq, r.ts_ms, r.bandwidth_mbps) for r in run1] == [(0, 0, 1.0), (1, 1000, 2.5)]
    assert all(r.latency_ms == 45.0 for r in run1)  # median of SPRINT/US-East RTTs
    # No VERIZON/US-West RTT: falls back to the VERIZON median over all locations.
    assert links["5gophers:throughput.VERIZON.TCP.8conn.US-West.run2"][0].latency_ms == 100.0
    assert links["5gophers:driving-1.SPRINT"][0].latency_ms == 50.0  # SPRINT over all locations
    assert links["5gophers:driving-1.TMOBILE"][0].latency_ms == 70.0  # no TMOBILE: overall median
    assert [r.bandwidth_mbps for r in links["5gophers:driving-1.VERIZON"]] == [53.0, 82.0]
    assert [r.ts_ms for r in links["5gophers:walking"]] == [1000, 2000]
    assert all(r.imputed == ALL_IMPUTED for recs in links.values() for r in recs)


def test_5gophers_unknown_csv(tmp_path):
    p = write(tmp_path / "x.csv", "a,b\n1,2\n")
    with pytest.raises(DataError, match="not a 5Gophers"):
        list(import_trace("5gophers", [p]))
    # The mmWave-only panel tests (many runs, no carrier) are not one series: refused.
    los = write(
        tmp_path / "los.csv",
        "protocol,num_tcp_conn,location,radio_type,run_num,seq_num,throughput_mbps,rtt_in_ms\nTCP,1,A,5G,1,0,900,20\n",
    )
    with pytest.raises(DataError, match="not a 5Gophers"):
        list(import_trace("5gophers", [los]))


# --- naming and errors -----------------------------------------------------------------------


def test_link_ids_sanitised_unique_and_bounded(tmp_path):
    a = write(tmp_path / "a+b", "0\t1\n")
    b = write(tmp_path / "a=b", "0\t1\n")
    long = write(tmp_path / ("x" * 200), "0\t1\n")
    ids = [lid for lid, _ in iter_trace_links("pensieve", [a, b, long])]
    assert ids[0] == "pensieve:a_b"
    assert ids[1].startswith("pensieve:a_b-") and ids[1] != ids[0]
    assert len(ids[2]) <= 128
    assert all(re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", i) for i in ids)


def test_bad_format_options_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="format must be one of"):
        list(import_trace("csv", [tmp_path]))
    with pytest.raises(DataError, match="does not exist"):
        list(import_trace("pensieve", [tmp_path / "nope"]))
    p = write(tmp_path / "t", "0\t1\n")
    with pytest.raises(DataError, match="unit must be one of"):
        list(import_trace("pensieve", [p], unit="gbit"))
    with pytest.raises(DataError, match="unknown import option"):
        list(import_trace("pensieve", [p], speed=3))


def test_load_dataset_missing_folder_and_unknown_name(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset("norway-hsdpa-3g", root=tmp_path)
    with pytest.raises(DataError, match="unknown trace dataset"):
        load_dataset("nope", root=tmp_path)


def test_load_dataset_on_a_tiny_copy(tmp_path):
    write(tmp_path / "norway-hsdpa-3g" / "SOURCE.md", "# not a trace\n")
    write(tmp_path / "norway-hsdpa-3g" / "norway_bus_1", "0\t1\n1\t2\n")
    write(tmp_path / "norway-hsdpa-3g" / "norway_car_2", "0\t3\n")
    d = load_dataset("norway-hsdpa-3g", root=tmp_path)
    assert list(d) == ["norway-hsdpa-3g:norway_bus_1", "norway-hsdpa-3g:norway_car_2"]
    assert [r.bandwidth_mbps for r in d["norway-hsdpa-3g:norway_bus_1"]] == [1.0, 2.0]


# --- the real datasets ---------------------------------------------------------------------

#: Links per dataset, from each SOURCE.md.
EXPECTED_LINKS = {
    "norway-hsdpa-3g": 80,
    "puffer-subset": 120,
    "mahimahi-cellular": 13,
    "ucc-5g-irish": 21,
    "5gophers-umn": 120 + 1 + 6,  # throughput runs + walking + 2 driving traces x 3 carriers
}


def _need(name: str) -> Path:
    if not (TRACES / name).is_dir():
        pytest.skip(f"real traces not available: {TRACES / name} is missing")
    return TRACES


@functools.cache
def _load(name: str) -> dict[str, list[Telemetry]]:
    return load_dataset(name, root=_need(name))


def _wire_dict(r: Telemetry) -> dict:
    """What to_dict() gives, built without dataclasses.asdict (100k records stay fast)."""
    d = {
        f: getattr(r, f)
        for f in ("link_id", "seq", "ts_ms", "latency_ms", "bandwidth_mbps", "packet_loss", "reliability", "profile")
    }
    if r.imputed:
        d["imputed"] = list(r.imputed)
    return d


@pytest.mark.traces
@pytest.mark.parametrize("name", sorted(set(DATASETS) - {"esnet-backbone-2018"}))  # esnet: test_traces_esnet.py
def test_real_dataset_loads_valid(name):
    links = _load(name)
    assert len(links) == EXPECTED_LINKS[name]
    for lid, recs in links.items():
        assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", lid) and lid.startswith(name + ":")
        assert [r.seq for r in recs] == list(range(len(recs)))
        assert all(a.ts_ms <= b.ts_ms for a, b in zip(recs, recs[1:]))
        for r in recs:
            assert r.link_id == lid and r.profile == "internet"
            assert Telemetry.from_dict(_wire_dict(r)) == r


@pytest.mark.traces
def test_real_sample_counts_match_source_md():
    assert sum(map(len, _load("norway-hsdpa-3g").values())) == 16_475
    assert sum(map(len, _load("puffer-subset").values())) == 108_963


@pytest.mark.traces
def test_real_mahimahi_means_match_source_table():
    links = _load("mahimahi-cellular")
    table = {
        "ATT-LTE-driving.down": (786, 5.17),
        "TMobile-LTE-short.up": (140, 13.32),
        "Verizon-EVDO-driving.down": (1062, 0.52),
    }
    for name, (seconds, mean) in table.items():
        recs = links[f"mahimahi-cellular:{name}"]
        assert len(recs) == seconds
        assert math.isclose(sum(r.bandwidth_mbps for r in recs) / len(recs), mean, abs_tol=0.006)


@pytest.mark.traces
def test_real_ucc_timestamps_deduplicated():
    for recs in _load("ucc-5g-irish").values():
        assert all(a.ts_ms < b.ts_ms for a, b in zip(recs, recs[1:]))
        assert any(r.imputed == () for r in recs)  # ping rows are fully measured
