"""stream.ops.healthcheck, the container health-check module: file checks and the real stack."""

from __future__ import annotations

import time
from pathlib import Path

import pytest


def test_healthcheck_files(tmp_path: Path) -> None:
    from stream.ops.healthcheck import CheckFailed, check_fresh, check_writable, main

    with pytest.raises(CheckFailed, match="no file"):
        check_fresh(tmp_path, 60)
    f = tmp_path / "2026-01-01" / "00.part-0000.jsonl.gz"
    f.parent.mkdir()
    f.write_bytes(b"x")
    check_fresh(tmp_path, 60)
    with pytest.raises(CheckFailed, match="old"):
        check_fresh(tmp_path, 60, now=time.time() + 3600)
    check_writable(tmp_path)
    assert main([f"fresh:{tmp_path}:60", f"writable:{tmp_path}"]) == 0
    assert main([f"fresh:{tmp_path / 'nothing'}:60"]) == 1
    assert main(["bogus"]) == 1


@pytest.mark.integration
def test_healthcheck_against_the_stack(bwp_settings, capsys: pytest.CaptureFixture[str]) -> None:
    from stream.core.settings import load_settings
    from stream.ops.healthcheck import main
    from stream.ops.stack import free_port

    assert main(["kafka", "redis"], settings=bwp_settings) == 0
    dead = load_settings(kafka_bootstrap=f"127.0.0.1:{free_port()}", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert main(["--timeout", "1", "kafka", "redis", f"http://127.0.0.1:{free_port()}/metrics"], settings=dead) == 1
    err = capsys.readouterr().err
    assert err.count("unhealthy:") == 3, err
