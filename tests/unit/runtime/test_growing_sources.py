"""Sources that grow: prefixes of csv and parquet files, windows, immutable snapshots and their retention,
and runs that train on a snapshot whatever the source has become since (file:// storage)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kiln_runtime import store
from kiln_runtime.train import dataset, spec, tables, validate

from .conftest import dataset_frame, pipeline

SCHEMA = {"target": "y", "checks": {"minRows": 1},
          "schema": {"columns": [{"name": "x", "type": "number"}, {"name": "n", "type": "integer"},
                                 {"name": "c", "type": "category", "allowed": ["1", "2"]},
                                 {"name": "b", "type": "boolean"}, {"name": "y", "type": "category"}]}}


def _put(path: Path, frame: pd.DataFrame, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    os.utime(path, (mtime, mtime))
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _canonical_version(pairs: list[tuple[str, str]], window: dict | None) -> str:
    body = {"files": sorted([k, s] for k, s in pairs), "window": window}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _snapshot_frame(summary: dict) -> pd.DataFrame:
    return pd.read_parquet(summary["snapshotUri"].removeprefix("file://"))


@pytest.fixture
def grown(tmp_path):
    """A prefix with three data files written at known times, plus files that are not data."""
    root = tmp_path / "labelled"
    old = pd.DataFrame({"x": ["1.5", "2.5"], "n": ["1", "2"], "c": ["1", "2"], "b": ["yes", "no"], "y": ["a", "b"]})
    # Parquet keeps native types; extra columns (what production label files carry) are ignored.
    mid = pd.DataFrame({"x": [3.5, None], "n": [3, 4], "c": [2, 1], "b": [True, False], "y": ["a", "a"],
                        "request_id": ["r1", "r2"], "prediction": ["b", "a"]})
    new = pd.DataFrame({"x": ["5.5"], "n": ["5"], "c": ["1"], "b": ["1"], "y": ["b"]})
    files = {"2024/old.csv": (old, 1000), "mid.parquet": (mid, 2000), "new.csv": (new, 2000)}
    for key, (frame, mtime) in files.items():
        _put(root / key, frame, mtime)
    (root / "README.txt").write_text("not data")
    _put(root / ".upload-in-progress.csv", old, 3000)
    ds = {**json.loads(json.dumps(SCHEMA)), "source": {"uri": f"file://{root}/"}}
    return root, ds


def test_a_prefix_is_every_data_file_below_it_oldest_first(tmp_path, run_cli, grown):
    root, ds = grown
    out = run_cli("validate-dataset", {"dataset": ds, "output": f"file://{tmp_path}/ds"})
    s = out.summary
    assert out.code == 0 and s["result"] == "Succeeded", s
    assert s["rows"] == 5 and s["files"] == 3 and "from 3 files" in s["message"]
    # (last-modified, key): old.csv first; mid.parquet and new.csv tie on time, so the key decides.
    want = _canonical_version([(k, _sha(root / k)) for k in ("2024/old.csv", "mid.parquet", "new.csv")], None)
    assert s["version"] == want
    snap = _snapshot_frame(s)
    assert list(snap.columns) == ["x", "n", "c", "b", "y"]  # request_id and prediction are not kept
    assert snap["n"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    # parquet's typed values and csv's text type alike
    assert snap["c"].tolist() == ["1", "2", "2", "1", "1"] and snap["b"].tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert np.isnan(snap["x"][3]) and snap["x"].dtype == np.float64
    manifest = json.loads(Path(s["snapshotUri"].removeprefix("file://")).with_name("manifest.json").read_text())
    assert [f["key"] for f in manifest["files"]] == ["2024/old.csv", "mid.parquet", "new.csv"]
    assert manifest["files"][1] == {"key": "mid.parquet", "size": (root / "mid.parquet").stat().st_size,
                                    "sha256": _sha(root / "mid.parquet")}
    assert manifest["sha256"] == s["snapshotSha256"] == _sha(Path(s["snapshotUri"].removeprefix("file://")))
    assert (manifest["version"], manifest["rows"], manifest["source"], manifest["window"]) == \
        (s["version"], 5, ds["source"]["uri"], None)


def test_the_snapshot_validates_again_unchanged(tmp_path, run_cli, grown):
    _, ds = grown
    s = run_cli("validate-dataset", {"dataset": ds, "output": f"file://{tmp_path}/ds"}).summary
    source_typed, _ = validate.validate(dataset.load(spec.parse_dataset(ds)).frame, spec.parse_dataset(ds))
    again, failures = validate.validate(tables.parse_table(Path(s["snapshotUri"][7:]).read_bytes(), "parquet"),
                                        spec.parse_dataset(ds))
    assert failures == []
    pd.testing.assert_frame_equal(again, source_typed.reset_index(drop=True), check_dtype=True)


def test_prefix_failures_name_the_file_and_its_row(tmp_path, run_cli, grown):
    root, ds = grown
    bad = pd.DataFrame({"x": ["1"] * 6 + ["abc"], "n": ["1"] * 7, "c": ["1"] * 7, "b": ["no"] * 7, "y": ["a"] * 7})
    _put(root / "late" / "x.parquet", bad, 5000)
    s = run_cli("validate-dataset", {"dataset": ds, "output": f"file://{tmp_path}/ds"}).summary
    assert s["reason"] == "ValidationFailed"
    assert s["message"] == "column x: 1 value(s) are not numbers, first 'abc' at late/x.parquet row 7"

    (root / "late" / "x.parquet").write_bytes(b"PAR1 but not really")
    s = run_cli("validate-dataset", {"dataset": ds, "output": f"file://{tmp_path}/ds"}).summary
    assert s["reason"] == "InvalidData" and f"{root}/late/x.parquet: not a readable parquet file" in s["message"]

    (root / "late" / "x.parquet").unlink()
    _put(root / "late" / "y.csv", bad.drop(columns=["n"]).head(1), 5000)
    s = run_cli("validate-dataset", {"dataset": ds, "output": f"file://{tmp_path}/ds"}).summary
    assert s["reason"] == "ValidationFailed" and s["message"].startswith("column n is missing from late/y.csv")


def test_an_empty_or_vanished_prefix_names_the_uri(tmp_path, run_cli):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no data yet")
    ds = {**SCHEMA, "source": {"uri": f"file://{tmp_path}/empty/"}}
    s = run_cli("validate-dataset", {"dataset": ds, "output": f"file://{tmp_path}/ds"}).summary
    assert s["reason"] == "SourceEmpty" and f"file://{tmp_path}/empty/" in s["message"]
    ds["source"]["uri"] = f"file://{tmp_path}/gone/"
    s = run_cli("validate-dataset", {"dataset": ds, "output": f"file://{tmp_path}/ds"}).summary
    assert s["reason"] == "SourceNotFound" and f"file://{tmp_path}/gone/" in s["message"]


def test_a_rows_window_keeps_the_newest_rows(tmp_path, run_cli, grown):
    root, ds = grown
    ds["window"] = {"rows": 2}
    s = run_cli("validate-dataset", {"dataset": ds, "output": f"file://{tmp_path}/ds"}).summary
    assert s["rows"] == 2 and "(window: the newest 2 rows)" in s["message"]
    assert _snapshot_frame(s)["n"].tolist() == [4.0, 5.0]  # the last of mid.parquet, then new.csv
    assert s["version"] == _canonical_version([(k, _sha(root / k)) for k in ("2024/old.csv", "mid.parquet",
                                                                              "new.csv")], {"rows": 2})


def test_a_days_window_counts_from_the_newest_timestamp(tmp_path, run_cli):
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": ["a", "b", "a", "b"],
                          "ts": ["2024-01-01T00:00:00Z", "2024-03-01", "2024-03-25T12:00:00+02:00", "2024-03-31"]})
    _put(tmp_path / "src" / "a.csv", frame.head(2), 1000)
    parquet = frame.tail(2).assign(ts=pd.to_datetime(frame.tail(2)["ts"], utc=True, format="ISO8601"))
    _put(tmp_path / "src" / "b.parquet", parquet, 2000)  # real parquet timestamps
    ds = {"target": "y", "source": {"uri": f"file://{tmp_path}/src/"}, "window": {"days": 30, "timestampColumn": "ts"},
          "schema": {"columns": [{"name": "x", "type": "number"}, {"name": "y", "type": "category"}]}}
    s = run_cli("validate-dataset", {"dataset": ds, "output": f"file://{tmp_path}/ds"}).summary
    assert s["result"] == "Succeeded", s
    # 2024-03-01 is exactly 30 days before 2024-03-31: inside; January is not.
    assert _snapshot_frame(s)["x"].tolist() == [2.0, 3.0, 4.0] and list(_snapshot_frame(s).columns) == ["x", "y"]

    _put(tmp_path / "src" / "c.csv", pd.DataFrame({"x": [5.0], "y": ["a"], "ts": ["last tuesday"]}), 3000)
    s = run_cli("validate-dataset", {"dataset": ds, "output": f"file://{tmp_path}/ds"}).summary
    assert s["reason"] == "ValidationFailed" and s["failures"][0]["column"] == "ts"
    assert "column ts: 1 value(s) are not timestamps" in s["message"]
    assert "'last tuesday' at c.csv row 1" in s["message"]


def test_a_single_file_keeps_its_version_and_is_snapshotted_once(tmp_path, run_cli, monkeypatch):
    frame, ds_spec = dataset_frame("iris")
    path = tmp_path / "iris.csv"
    frame.to_csv(path, index=False)
    ds = {**ds_spec, "source": {"uri": f"file://{path}", "format": "csv"}}
    cfg = {"dataset": ds, "output": f"file://{tmp_path}/ds"}
    first = run_cli("validate-dataset", cfg).summary
    assert first["version"] == _sha(path) and first["files"] == 1 and first["rows"] == 150
    assert first["snapshotUri"] == f"file://{tmp_path}/ds/versions/{first['version']}/data.parquet"
    data = Path(first["snapshotUri"][7:])
    stamp = (data.stat().st_mtime_ns, data.with_name("manifest.json").read_bytes())

    writes = []
    real = store.write_bytes
    monkeypatch.setattr(store, "write_bytes", lambda uri, body: writes.append(uri) or real(uri, body))
    second = run_cli("validate-dataset", cfg).summary
    assert writes == [] and (data.stat().st_mtime_ns, data.with_name("manifest.json").read_bytes()) == stamp
    assert {k: second[k] for k in ("version", "snapshotUri", "snapshotSha256", "profileSha256")} == \
        {k: first[k] for k in ("version", "snapshotUri", "snapshotSha256", "profileSha256")}


def test_retention_deletes_only_unlisted_versions(tmp_path, run_cli, grown):
    _, ds = grown
    out = tmp_path / "ds"
    old = ["a" * 64, "b" * 64, "c" * 64]
    for v in old:
        (out / "versions" / v).mkdir(parents=True)
        (out / "versions" / v / "data.parquet").write_bytes(b"x")
        (out / "versions" / v / "manifest.json").write_text("{}")
    (out / "versions" / "notes").mkdir()
    (out / "versions" / "notes" / "keep.txt").write_text("not a version")
    s = run_cli("validate-dataset", {"dataset": ds, "output": f"file://{out}",
                                     "keepVersions": [f"sha256:{'A' * 64}"]}).summary
    assert s["deletedVersions"] == ["b" * 64, "c" * 64]
    assert sorted(p.name for p in (out / "versions").iterdir()) == sorted(["a" * 64, "notes", s["version"]])
    s = run_cli("validate-dataset", {"dataset": ds, "output": f"file://{out}", "keepVersions": []}).summary
    assert s["deletedVersions"] == ["a" * 64] and (out / "versions" / s["version"] / "data.parquet").exists()
    assert "deletedVersions" not in run_cli("validate-dataset", {"dataset": ds, "output": f"file://{out}"}).summary


def _iris_prefix(root: Path, parts: int) -> None:
    frame, _ = dataset_frame("iris")
    shuffled = frame.sample(frac=1, random_state=0).reset_index(drop=True)
    for i in range(parts):
        chunk = shuffled.iloc[i * 50:(i + 1) * 50]
        _put(root / f"part-{i}.{'parquet' if i % 2 else 'csv'}", chunk, 1000 + i)


def _iris_dataset(tmp_path: Path, parts: int) -> tuple[Path, dict]:
    """A prefix of `parts` iris files and the Dataset spec that reads it."""
    root = tmp_path / "src"
    _iris_prefix(root, parts)
    _, ds_spec = dataset_frame("iris")
    return root, {**ds_spec, "source": {"uri": f"file://{root}/"}}


def test_runs_train_on_the_snapshot_after_the_source_changed_and_vanished(tmp_path, run_cli):
    root, ds = _iris_dataset(tmp_path, 2)
    v1 = run_cli("validate-dataset", {"dataset": ds, "output": f"file://{tmp_path}/ds"}).summary
    _iris_prefix(root, 3)  # a third file lands: a new version
    v2 = run_cli("validate-dataset", {"dataset": ds, "output": f"file://{tmp_path}/ds"}).summary
    assert (v1["rows"], v2["rows"]) == (100, 150) and v1["version"] != v2["version"]
    shutil.rmtree(root)  # and then the source is gone altogether

    cfg = {"dataset": ds, "pipeline": pipeline("DecisionTreeClassifier", {"max_depth": 3}),
           "output": f"file://{tmp_path}/run", "datasetVersion": v1["version"],
           "datasetSnapshot": {"uri": v1["snapshotUri"], "sha256": v1["snapshotSha256"]}}
    t = run_cli("trial", cfg, index=0)
    assert t.code == 0 and t.summary["datasetVersion"] == v1["version"], t.summary
    result = json.loads(Path(t.summary["resultUri"][7:]).read_text())
    assert sum(result["rows"].values()) == 100  # the earlier version's rows
    sel = run_cli("select", cfg)
    assert sel.code == 0 and sel.summary["modelVersion"]["lineage"]["datasetVersion"] == v1["version"]
    assert sel.summary["measuredOn"]["rows"] == 25  # testFraction 0.25 of the 100 rows

    # Without the snapshot a run reads the source, which is gone.
    legacy = {k: v for k, v in cfg.items() if k != "datasetSnapshot"}
    gone = run_cli("trial", {**legacy, "output": f"file://{tmp_path}/r2"}, index=0)
    assert gone.summary["reason"] == "SourceNotFound"


def test_a_snapshot_that_does_not_match_its_digest_is_refused(tmp_path, run_cli):
    _, ds = _iris_dataset(tmp_path, 2)
    v = run_cli("validate-dataset", {"dataset": ds, "output": f"file://{tmp_path}/ds"}).summary
    cfg = {"dataset": ds, "pipeline": pipeline("DecisionTreeClassifier"), "output": f"file://{tmp_path}/run",
           "datasetVersion": v["version"], "datasetSnapshot": {"uri": v["snapshotUri"], "sha256": "0" * 64}}
    out = run_cli("trial", cfg, index=0)
    assert out.code == 10 and out.summary["reason"] == "DigestMismatch" and v["snapshotUri"] in out.summary["message"]
    snap = Path(v["snapshotUri"][7:])
    snap.write_bytes(snap.read_bytes() + b"\0")  # altered in place
    cfg["datasetSnapshot"]["sha256"] = v["snapshotSha256"]
    assert run_cli("trial", cfg, index=0).summary["reason"] == "DigestMismatch"


@pytest.mark.parametrize("raw,match", [
    ({"rows": 0}, "window.rows must be at least 1"),
    ({"rows": 5, "days": 2}, "rows or days, not both"),
    ({"days": 7}, "timestampColumn"),
    ({"hours": 7}, "must set rows"),
])
def test_window_spec_errors_name_the_field(raw, match):
    with pytest.raises(Exception, match=match):
        spec.parse_dataset({**SCHEMA, "source": {"uri": "file:///d/"}, "window": raw})


def test_run_config_errors_name_the_field():
    base = {"dataset": {**SCHEMA, "source": {"uri": "file:///d.csv"}}, "output": "file:///o"}
    with pytest.raises(Exception, match="datasetSnapshot needs datasetVersion"):
        spec.parse({**base, "datasetSnapshot": {"uri": "file:///s.parquet", "sha256": "a" * 64}}, needs_pipeline=False)
    with pytest.raises(Exception, match="keepVersions must be a list"):
        spec.parse({**base, "keepVersions": "all"}, needs_pipeline=False)
    with pytest.raises(Exception, match="a prefix .* must be s3:// or file://"):
        spec.parse_dataset({**SCHEMA, "source": {"uri": "https://host/dir/"}})
