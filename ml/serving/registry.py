"""A directory-based model registry with checksums, a ``current`` pointer and rollback.

Layout of ``BWP_MODEL_DIR``::

    <version>/lstm.keras  qnet.keras  preprocessing.json  metadata.json
    current          # one line: the version serving code loads
    history.json     # promotions, oldest first, for rollback

Version names sort by creation time: ``v20261125-180301-ab12``. Every file is
written to a temporary name and moved into place with :func:`os.replace`, so a
reader never sees half a pointer. Models load with ``safe_mode=True`` and no
pickle is involved anywhere.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy

from ml.forecast.features import Preprocessor
from ml.policy.observation import obs_dim, observation_layout
from stream.core.errors import ModelError
from stream.core.fileio import atomic_write_text
from stream.core.records import FEATURES, N_ACTIONS, WINDOW

LSTM_FILE = "lstm.keras"
QNET_FILE = "qnet.keras"
PREPROCESSING_FILE = "preprocessing.json"
METADATA_FILE = "metadata.json"
CURRENT_FILE = "current"
HISTORY_FILE = "history.json"
ARTEFACTS = (LSTM_FILE, QNET_FILE, PREPROCESSING_FILE)
_VERSION_RE = re.compile(r"v\d{8}-\d{6}-[0-9a-f]{4}")


@dataclass
class LoadedVersion:
    """Everything a predictor needs from one verified version."""

    version: str
    path: Path
    lstm: Any  # keras.Model (10, 4) -> 1
    qnet: Any  # keras.Model (obs_dim(observation_layout(metadata)),) -> N_ACTIONS
    preprocessor: Preprocessor
    metadata: dict[str, Any]


def new_version_name(now: dt.datetime | None = None) -> str:
    """``vYYYYMMDD-HHMMSS-xxxx`` (UTC), sortable by creation time."""
    now = now or dt.datetime.now(dt.UTC)
    return f"v{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of the libraries that wrote (or must read) the artefacts."""
    import keras  # Keras (TensorFlow): seconds to import; only model code needs it
    import tensorflow as tf  # TensorFlow: seconds to import; only model code needs it

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": numpy.__version__,
    }


def _io_shapes(model: Any) -> tuple[list, list]:
    """([each input's shape without the batch axis], [the output's]): the window first; a
    forecaster with long-memory context has a second input (N, C)."""
    ins = model.input_shape if isinstance(model.input_shape, list) else [model.input_shape]
    return [list(s[1:]) for s in ins], [list(model.output_shape[1:])]


def save_version(
    model_dir: Path | str,
    lstm: Any,
    qnet: Any,
    preprocessor: Preprocessor,
    metadata: dict[str, Any],
    promote: bool = True,
    version: str | None = None,
) -> str:
    """Write a new version (models, preprocessing, metadata with checksums); returns its name.

    The version is assembled in a hidden temporary folder and renamed into place, so a
    half-written version never shows up in :func:`list_versions`. ``promote`` makes it
    current.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    version = version or new_version_name()
    if not _VERSION_RE.fullmatch(version):
        raise ModelError(f"version name must look like v20261125-180301-ab12, got {version!r}")
    final = model_dir / version
    if final.exists():
        raise ModelError(f"version {version} already exists in {model_dir}")
    tmp = Path(tempfile.mkdtemp(dir=model_dir, prefix=f".{version}."))
    try:
        lstm.save(tmp / LSTM_FILE)
        qnet.save(tmp / QNET_FILE)
        (tmp / PREPROCESSING_FILE).write_text(preprocessor.to_json(), encoding="utf-8")
        lstm_in, lstm_out = _io_shapes(lstm)
        q_in, q_out = _io_shapes(qnet)
        meta = dict(metadata)
        meta.update(
            {
                "version": version,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "features": list(FEATURES),
                "window": WINDOW,
                "n_actions": N_ACTIONS,
                "shapes": {
                    # "input": the window; "inputs": every input (a context model's second one too)
                    "lstm": {"input": lstm_in[0], "inputs": lstm_in, "output": lstm_out[0]},
                    "qnet": {"input": q_in[0], "output": q_out[0]},
                },
                "libraries": library_versions(),
                "sha256": {name: sha256_file(tmp / name) for name in ARTEFACTS},
            }
        )
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str), encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; readers may run as another user
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if promote:
        promote_version(model_dir, version)
    return version


def list_versions(model_dir: Path | str) -> list[str]:
    """Every complete version in the registry, oldest first."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(
        p.name
        for p in model_dir.iterdir()
        if p.is_dir() and _VERSION_RE.fullmatch(p.name) and (p / METADATA_FILE).is_file()
    )


def current_version(model_dir: Path | str) -> str | None:
    """The version the ``current`` pointer names, or None when nothing was promoted."""
    p = Path(model_dir) / CURRENT_FILE
    if not p.is_file():
        return None
    name = p.read_text(encoding="utf-8").strip()
    return name or None


def _history(model_dir: Path) -> list[str]:
    p = model_dir / HISTORY_FILE
    if not p.is_file():
        return []
    try:
        h = json.loads(p.read_text(encoding="utf-8"))
        return [str(v) for v in h["promotions"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{p} is not a valid registry history: {exc}") from exc


def promote_version(model_dir: Path | str, version: str) -> None:
    """Make ``version`` current (atomic pointer write) and append it to the history."""
    model_dir = Path(model_dir)
    if version not in list_versions(model_dir):
        raise ModelError(f"cannot promote {version!r}: not a version in {model_dir} (have {list_versions(model_dir)})")
    hist = _history(model_dir)
    hist.append(version)
    atomic_write_text(model_dir / HISTORY_FILE, json.dumps({"promotions": hist}, indent=2))
    atomic_write_text(model_dir / CURRENT_FILE, version + "\n")


def rollback(model_dir: Path | str) -> str:
    """Make the previously current version current again; returns it.

    The history is a stack of promotions: rollback pops the current one, so two
    rollbacks in a row go back two promotions.
    """
    model_dir = Path(model_dir)
    hist = _history(model_dir)
    cur = current_version(model_dir)
    if cur is not None and hist and hist[-1] == cur:
        hist.pop()
    available = set(list_versions(model_dir))
    while hist and (hist[-1] == cur or hist[-1] not in available):
        hist.pop()
    if not hist:
        raise ModelError(f"nothing to roll back to in {model_dir}: no earlier promoted version (current is {cur})")
    target = hist[-1]
    atomic_write_text(model_dir / HISTORY_FILE, json.dumps({"promotions": hist}, indent=2))
    atomic_write_text(model_dir / CURRENT_FILE, target + "\n")
    return target


def read_metadata(model_dir: Path | str, version: str | None = None) -> dict[str, Any]:
    """metadata.json of ``version`` (default: current), without loading the models."""
    model_dir = Path(model_dir)
    version = version or current_version(model_dir)
    if version is None:
        raise ModelError(f"no current model in {model_dir}: train one with `bwp train` or pass a version")
    p = model_dir / version / METADATA_FILE
    if not p.is_file():
        raise ModelError(f"version {version} has no {METADATA_FILE} in {model_dir} (have {list_versions(model_dir)})")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelError(f"{p} is not valid JSON: {exc}") from exc


def verify_version(model_dir: Path | str, version: str) -> dict[str, Any]:
    """Check every artefact against the checksums in metadata; returns the metadata."""
    path = Path(model_dir) / version
    meta = read_metadata(model_dir, version)
    sums = meta.get("sha256") or {}
    for name in ARTEFACTS:
        f = path / name
        if not f.is_file():
            raise ModelError(f"model {version} is incomplete: {name} is missing in {path}")
        if name not in sums:
            raise ModelError(f"model {version}: metadata has no sha256 for {name}")
        got = sha256_file(f)
        if got != sums[name]:
            raise ModelError(
                f"model {version}: {name} does not match its checksum (expected sha256 {sums[name][:16]}..., "
                f"got {got[:16]}...); the file was modified or corrupted"
            )
    return meta


def _check_shapes(version: str, name: str, model: Any, expect_in: list, expect_out: list, meta_shapes: dict) -> None:
    got_in, got_out = _io_shapes(model)
    if got_in[0] != expect_in or got_out[0] != expect_out:
        raise ModelError(
            f"model {version}: {name} maps {got_in[0]} -> {got_out[0]}, expected {expect_in} -> {expect_out}"
        )
    if meta_shapes and (meta_shapes.get("input") != got_in[0] or meta_shapes.get("output") != got_out[0]):
        raise ModelError(
            f"model {version}: {name} shapes {got_in[0]} -> {got_out[0]} differ from metadata {meta_shapes}"
        )


def _qnet_width(version: str, meta: dict[str, Any], qnet: Any) -> int:
    """The Q-network input width the metadata's observation layout needs; ModelError when the layout is
    unknown, needs quantiles a point model does not have, or the Q-network was built for another width."""
    layout = observation_layout(meta)
    try:
        width = obs_dim(layout)
    except ValueError as exc:
        raise ModelError(f"model {version}: metadata policy.observation: {exc}") from exc
    if layout == "quantiles" and meta.get("head", "point") != "quantile":
        raise ModelError(f"model {version}: policy.observation is 'quantiles' but the forecaster is a point model")
    got = list(qnet.input_shape[1:])
    if got != [width]:
        recorded = isinstance(meta.get("policy"), dict) and "observation" in meta["policy"]
        raise ModelError(
            f"model {version}: {QNET_FILE} takes {got} inputs, but its observation layout {layout!r} "
            f"(metadata policy.observation{'' if recorded else ', absent'}) has {width} columns: "
            "the Q-network was trained on another observation"
        )
    return width


def load_version(model_dir: Path | str, version: str | None = None) -> LoadedVersion:
    """Verify and load a version (default: current).

    Raises :class:`ModelError` when there is no such version, a file is missing or
    its checksum does not match, a model cannot be deserialised in safe mode, or an
    input/output shape differs from (10, 4) -> 1 (a quantile model: H x Q, from its
    metadata) and (width of the observation layout,) -> 10 (``metadata["policy"]["observation"]``:
    ``"point"`` 9 when absent, ``"quantiles"`` 11, for quantile models only). Version 1 artefacts
    (no ``head`` in metadata) are point models.
    """
    import keras  # Keras (TensorFlow): seconds to import; only model code needs it

    model_dir = Path(model_dir)
    version = version or current_version(model_dir)
    if version is None:
        raise ModelError(f"no current model in {model_dir}: train one with `bwp train` or `bwp models promote`")
    if not (model_dir / version).is_dir():
        raise ModelError(f"model version {version!r} not found in {model_dir} (have {list_versions(model_dir)})")
    meta = verify_version(model_dir, version)
    path = model_dir / version
    models = {}
    for name in (LSTM_FILE, QNET_FILE):
        try:
            models[name] = keras.models.load_model(path / name, safe_mode=True, compile=False)
        except Exception as exc:  # keras raises many types for a bad archive
            raise ModelError(f"model {version}: cannot load {name} in safe mode: {exc}") from exc
    shapes = meta.get("shapes", {})
    out = [1]
    if meta.get("head", "point") == "quantile":
        fc = meta.get("forecast") or {}
        out = [len(fc.get("horizons", [])) * len(fc.get("quantiles", []))]
    _check_shapes(version, LSTM_FILE, models[LSTM_FILE], [WINDOW, len(FEATURES)], out, shapes.get("lstm", {}))
    width = _qnet_width(version, meta, models[QNET_FILE])
    _check_shapes(version, QNET_FILE, models[QNET_FILE], [width], [N_ACTIONS], shapes.get("qnet", {}))
    pre = Preprocessor.from_json((path / PREPROCESSING_FILE).read_text(encoding="utf-8"))
    return LoadedVersion(version, path, models[LSTM_FILE], models[QNET_FILE], pre, meta)
