"""Saved surrogates: nothing in a folder can run code on `load`; damaged, edited, foreign
and crafted files are refused with the file named."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil

import numpy as np
import pandas as pd
import pytest

import surrogates
from surrogates import SklearnSurrogate, XGBoostSurrogate
from surrogates._files import meta_checksum


class _RunsCode:
    """Unpickling this runs `os.system(command)`: the classic pickle attack."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = pd.DataFrame({"WT": rng.uniform(40, 120, n), "AGE": rng.uniform(18, 90, n)})
    return x, (x["WT"] / 10 + x["AGE"] / 30 + rng.normal(0, 0.1, n)).to_numpy()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    x, y = _data()
    root = tmp_path_factory.mktemp("saved")
    models = {
        "linear": SklearnSurrogate("linear"),
        "random_forest": SklearnSurrogate("random_forest", n_estimators=5),
        "xgboost": XGBoostSurrogate(n_estimators=5, early_stopping_rounds=None),
    }
    return {name: (m.fit(x, y, key=0).save(root / name), x) for name, m in models.items()}


def _copy(saved, name, tmp_path):
    target = tmp_path / name
    shutil.copytree(saved[name][0], target)
    return target


def _rewrite_meta(folder, change):
    meta = json.loads((folder / "surrogate.json").read_text())
    change(meta)
    meta["checksum"] = meta_checksum(meta)
    (folder / "surrogate.json").write_text(json.dumps(meta))


def test_round_trip_holds_no_pickle(saved):
    for folder, x in saved.values():
        files = {p.name for p in folder.rglob("*") if p.is_file()}
        assert not any(f.endswith((".pkl", ".pickle", ".joblib")) for f in files), files
        meta = json.loads((folder / "surrogate.json").read_text())
        assert meta["format"] == 2 and set(meta["files"]) == files - {"surrogate.json"}
        loaded = surrogates.load(folder)
        assert type(loaded).__name__ in ("SklearnSurrogate", "XGBoostSurrogate")
        assert np.isfinite(loaded.predict(x).mean).all()


def test_a_pickle_in_the_folder_never_runs(saved, tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_RunsCode(f"touch {marker}"))
    # 1. The old layout: a format-1 surrogate.json beside a crafted sklearn.pkl.
    legacy = _copy(saved, "linear", tmp_path)
    for f in legacy.iterdir():
        f.unlink()
    (legacy / "sklearn.pkl").write_bytes(payload)
    meta = {"format": 1, "class": "SklearnSurrogate", "hyperparameters": {"kind": "linear"}}
    (legacy / "surrogate.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"format 1.*pickle"):
        surrogates.load(legacy)
    # 2. A pickle dropped beside a valid saved model, even with the listing rewritten to name
    #    it under the model's own file name.
    dropped = _copy(saved, "linear", tmp_path / "b")
    (dropped / "sklearn.pkl").write_bytes(payload)
    with pytest.raises(ValueError, match=r"sklearn\.pkl: a file that surrogate\.json does not"):
        surrogates.load(dropped)
    renamed = _copy(saved, "linear", tmp_path / "c")
    (renamed / "sklearn.skops").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()

    def relist(meta):
        meta["files"]["sklearn.skops"] = {"bytes": len(payload), "sha256": digest}

    _rewrite_meta(renamed, relist)
    with pytest.raises(ValueError, match=r"sklearn\.skops: not a skops file"):
        surrogates.load(renamed)
    assert not marker.exists(), "loading a crafted folder executed code"


def test_skops_file_with_a_foreign_type_is_refused(saved, tmp_path):
    import skops.io

    folder = _copy(saved, "linear", tmp_path)
    marker = tmp_path / "pwned"
    # A skops file whose object is not one of the reviewed types (a function of `os`).
    skops.io.dump({"model": os.system}, folder / "sklearn.skops")
    data = (folder / "sklearn.skops").read_bytes()

    def relist(meta):
        meta["files"]["sklearn.skops"] = {
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }

    _rewrite_meta(folder, relist)
    with pytest.raises(ValueError, match=r"sklearn\.skops: holds types"):
        surrogates.load(folder)
    assert not marker.exists()


def test_tampered_and_damaged_files_are_refused(saved, tmp_path):
    # One flipped byte in the XGBoost model.
    folder = _copy(saved, "xgboost", tmp_path / "a")
    model = folder / "xgboost.ubj"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"xgboost\.ubj: its size or SHA-256 differs"):
        surrogates.load(folder)
    # A missing file.
    folder = _copy(saved, "random_forest", tmp_path / "b")
    (folder / "sklearn.skops").unlink()
    with pytest.raises(ValueError, match=r"sklearn\.skops: listed in surrogate\.json but missing"):
        surrogates.load(folder)
    # An edit to surrogate.json itself (the conformal quantile), checksum left as it was.
    folder = _copy(saved, "linear", tmp_path / "c")
    meta = json.loads((folder / "surrogate.json").read_text())
    meta["conformal_q"] = 0.0
    (folder / "surrogate.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="checksum does not match its content"):
        surrogates.load(folder)
    # A listing that climbs out of the folder.
    folder = _copy(saved, "linear", tmp_path / "d")
    _rewrite_meta(folder, lambda m: m["files"].update({"../x": {"bytes": 0, "sha256": ""}}))
    with pytest.raises(ValueError, match=r"'\.\./x' points outside the folder"):
        surrogates.load(folder)
    # Not JSON at all.
    folder = _copy(saved, "linear", tmp_path / "e")
    (folder / "surrogate.json").write_bytes(b"\x80\x04not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        surrogates.load(folder)


def test_crafted_tree_indices_are_refused(saved, tmp_path):
    """A random forest whose node arrays point outside themselves (which scikit-learn
    would follow without bounds checks) is refused after skops reads it."""
    x, y = _data()
    model = SklearnSurrogate("random_forest", n_estimators=2).fit(x, y, key=0)
    tree = model.model[-1].estimators_[0].tree_
    state = tree.__getstate__()
    nodes = state["nodes"].copy()
    internal = np.flatnonzero(nodes["left_child"] != -1)[0]
    nodes["left_child"][internal] = 10**6  # far outside the node array
    state["nodes"] = nodes
    tree.__setstate__(state)  # scikit-learn itself accepts it
    folder = model.save(tmp_path / "crafted")
    with pytest.raises(ValueError, match="tree 0 of the random forest has node indices"):
        surrogates.load(folder)


def test_save_never_overwrites_a_folder_of_other_files(saved, tmp_path):
    x, y = _data()
    model = SklearnSurrogate("linear").fit(x, y, key=0)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.docx").write_text("years of work")
    with pytest.raises(FileExistsError, match="holds files and no saved surrogate"):
        model.save(tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.docx").read_text() == "years of work"
    # Saving again over a saved surrogate replaces it whole (no stale file left).
    folder = _copy(saved, "xgboost", tmp_path)
    model.save(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["sklearn.skops", "surrogate.json"]
    assert isinstance(surrogates.load(folder), SklearnSurrogate)
