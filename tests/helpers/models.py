"""A quick-trained model registry shared by every test that needs a real model.

The lead wires this into ``tests/conftest.py`` as a session fixture, e.g.::

    @pytest.fixture(scope="session")
    def trained_model_dir(tmp_path_factory):
        return quick_model_dir(tmp_path_factory)

so the quick model (about 30 s on 2 cores) is trained once per test run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_CACHE: dict = {}


def quick_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry directory holding one quick-trained, promoted version (trained on first call)."""
    if "dir" not in _CACHE:
        from ml.train import TrainConfig, train

        d = tmp_path_factory.mktemp("bwp-quick-model")
        lines: list[str] = []
        train(TrainConfig(quick=True, model_dir=d, seed=0, progress=lines.append))
        _CACHE["dir"], _CACHE["progress"] = d, lines
    return _CACHE["dir"]


def quick_model_progress() -> list[str]:
    """The progress lines of the quick model's training (after :func:`quick_model_dir`)."""
    return list(_CACHE.get("progress", []))
