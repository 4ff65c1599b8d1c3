"""Model registry: artefacts, checksums, shapes, promote and rollback (untrained models)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ml.data import make_windows
from ml.forecast.features import Preprocessor
from ml.serving import registry as reg
from stream.core.errors import ModelError


@pytest.fixture(scope="module")
def parts():
    import keras

    from ml.forecast.lstm import build_lstm
    from ml.policy.observation import OBS_DIM
    from ml.policy.qnet import build_qnetwork

    rng = np.random.default_rng(0)
    s = np.abs(rng.normal(10, 2, (60, 4)))
    pre = Preprocessor().fit(*make_windows(s))
    inp = keras.Input((10, 3))
    wrong = keras.Model(inp, keras.layers.Dense(1)(keras.layers.Flatten()(inp)))
    return build_lstm(seed=0), build_qnetwork(OBS_DIM, seed=0), pre, wrong


def _save(tmp, parts, **kw):
    lstm, qnet, pre, _ = parts
    return reg.save_version(tmp, lstm, qnet, pre, {"metrics": {"x": 1}}, **kw)


def test_save_load_round_trip(tmp_path, parts):
    v = _save(tmp_path, parts)
    assert reg.list_versions(tmp_path) == [v]
    assert reg.current_version(tmp_path) == v
    meta = reg.read_metadata(tmp_path)
    assert meta["version"] == v and meta["metrics"] == {"x": 1}
    assert set(meta["sha256"]) == {"lstm.keras", "qnet.keras", "preprocessing.json"}
    assert meta["shapes"]["lstm"] == {"input": [10, 4], "inputs": [[10, 4]], "output": [1]}
    assert set(meta["libraries"]) == {"python", "tensorflow", "keras", "numpy"}
    loaded = reg.load_version(tmp_path)
    x = np.random.default_rng(1).normal(size=(3, 10, 4)).astype(np.float32)
    np.testing.assert_allclose(loaded.lstm(x, training=False), parts[0](x, training=False), rtol=1e-5, atol=1e-5)
    assert loaded.preprocessor == parts[2]
    # no pickle anywhere: the registry holds only .keras archives and JSON
    assert sorted(p.name for p in (tmp_path / v).iterdir()) == sorted(
        ["lstm.keras", "qnet.keras", "preprocessing.json", "metadata.json"]
    )


def test_tampered_file_is_refused(tmp_path, parts):
    v = _save(tmp_path, parts)
    f = tmp_path / v / "lstm.keras"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="lstm.keras does not match its checksum"):
        reg.load_version(tmp_path, v)


def test_missing_file_is_refused(tmp_path, parts):
    v = _save(tmp_path, parts)
    (tmp_path / v / "qnet.keras").unlink()
    with pytest.raises(ModelError, match="qnet.keras is missing"):
        reg.load_version(tmp_path, v)


def test_wrong_shape_is_refused_even_with_valid_checksums(tmp_path, parts):
    _, qnet, pre, wrong = parts
    v = reg.save_version(tmp_path, wrong, qnet, pre, {})
    with pytest.raises(ModelError, match=r"maps \[10, 3\] -> \[1\], expected \[10, 4\] -> \[1\]"):
        reg.load_version(tmp_path, v)


def test_metadata_shape_mismatch_is_refused(tmp_path, parts):
    v = _save(tmp_path, parts)
    mp = tmp_path / v / "metadata.json"
    meta = json.loads(mp.read_text())
    meta["shapes"]["qnet"]["input"] = [99]
    mp.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="differ from metadata"):
        reg.load_version(tmp_path, v)


# A point LSTM passes the quantile head's shape check when H x Q = 1 (the Q-network check is the subject here).
_ONE_BY_ONE = {"head": "quantile", "forecast": {"horizons": [1], "quantiles": [0.5]}}


@pytest.mark.parametrize(
    ("meta", "width", "error"),
    [
        ({}, 9, None),  # every artefact before the layout was recorded: 9 columns
        ({"policy": {"observation": "point"}}, 9, None),
        ({**_ONE_BY_ONE, "policy": {"observation": "quantiles"}}, 11, None),
        (
            {},
            11,
            r"takes \[11\] inputs, but its observation layout 'point' \(metadata policy.observation, absent\) has 9",
        ),
        ({**_ONE_BY_ONE, "policy": {"observation": "quantiles"}}, 9, r"layout 'quantiles' .* has 11 columns"),
        ({"policy": {"observation": "quantiles"}}, 11, "'quantiles' but the forecaster is a point model"),
        ({"policy": {"observation": "deltas"}}, 9, "unknown observation layout 'deltas'"),
    ],
)
def test_qnet_width_must_match_the_observation_layout(tmp_path, parts, meta, width, error):
    from ml.policy.qnet import build_qnetwork

    lstm, _, pre, _ = parts
    v = reg.save_version(tmp_path, lstm, build_qnetwork(width, seed=0), pre, meta)
    if error is None:
        assert reg.load_version(tmp_path, v).qnet.input_shape == (None, width)
    else:
        with pytest.raises(ModelError, match=error):
            reg.load_version(tmp_path, v)


def test_no_model_and_unknown_version(tmp_path):
    with pytest.raises(ModelError, match="no current model"):
        reg.load_version(tmp_path)
    with pytest.raises(ModelError, match="not found"):
        reg.load_version(tmp_path, "v20260101-000000-abcd")


def test_promote_and_rollback(tmp_path, parts):
    v1 = _save(tmp_path, parts, version="v20260101-000000-aaaa")
    v2 = _save(tmp_path, parts, version="v20260102-000000-bbbb", promote=False)
    assert reg.current_version(tmp_path) == v1  # --no-promote leaves the pointer alone
    v3 = _save(tmp_path, parts, version="v20260103-000000-cccc")
    assert reg.list_versions(tmp_path) == [v1, v2, v3]
    assert reg.current_version(tmp_path) == v3
    reg.promote_version(tmp_path, v2)
    assert reg.current_version(tmp_path) == v2
    assert reg.rollback(tmp_path) == v3
    assert reg.rollback(tmp_path) == v1
    assert reg.current_version(tmp_path) == v1
    with pytest.raises(ModelError, match="nothing to roll back"):
        reg.rollback(tmp_path)
    with pytest.raises(ModelError, match="not a version"):
        reg.promote_version(tmp_path, "v20990101-000000-ffff")
    with pytest.raises(ModelError, match="already exists"):
        _save(tmp_path, parts, version=v1)
    # no temporary files left behind by the atomic writes
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
