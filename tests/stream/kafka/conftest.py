"""Fixtures of the settings and security tests: a clean BWP_* environment and a throwaway PKI."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No BWP_* from the developer's shell leaks into these tests."""
    for k in list(os.environ):
        if k.startswith("BWP_"):
            monkeypatch.delenv(k)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA and a client certificate/key signed by it (PEM files)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*cmd: str) -> None:
        subprocess.run(["openssl", *cmd], cwd=d, check=True, capture_output=True)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=bwp-test-ca")
    run("req", *ec, "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=bwp-test-client")
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "client.pem", "-days", "2")  # fmt: skip
    run("req", *ec, "-keyout", "other.key", "-out", "other.csr", "-subj", "/CN=other")
    (d / "garbage.pem").write_text("this is not a certificate\n")
    return {p.stem if p.suffix == ".pem" else p.name: p for p in d.iterdir()}
