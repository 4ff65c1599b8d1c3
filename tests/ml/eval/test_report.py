"""``bwp report`` on a tiny registry."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers.policy import tiny_registry


def test_report_writes_html_with_its_plots(tmp_path: Path) -> None:
    from stream.cli.main import main

    version, _ = tiny_registry(tmp_path / "models")
    out = tmp_path / "report"
    rc = main(
        [
            "report",
            "--out",
            str(out),
            "--model-dir",
            str(tmp_path / "models"),
            "--profile",
            "datacenter",
            "internet",
            "--links",
            "2",
            "--steps",
            "60",
        ]
    )
    assert rc == 0
    page = (out / "index.html").read_text()
    assert version in page
    images = re.findall(r"<img src='([^']+)'", page)
    assert set(images) == {"forecast_vs_actual.png", "error_cdf.png", "policy_scores.png", "ddqn_training.png"}
    for name in images:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "profile datacenter" in page and "profile internet" in page
    assert "normalized_score" in page
