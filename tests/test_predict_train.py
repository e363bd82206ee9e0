"""Workload generator, training (dataset, fit, ONNX export, held-out metrics), model loading and `sidecar train`."""

from __future__ import annotations

import bisect
import collections
import json

import numpy as np
import onnx
import pytest

from sidecar import cli
from sidecar.predict.accesslog import AccessLog, read_log
from sidecar.predict.features import FEATURES, FeatureTracker
from sidecar.predict.model import (META_FEATURES, META_HORIZON, ModelError, ModelSchemaError, Predictor,
                                   shipped_model_path)
from sidecar.predict.train import Listings, build_dataset, evaluate, train
from sidecar.predict.workload import generate


def test_workloads_are_deterministic_time_ordered_and_distinct():
    for kind in ("periodic", "zipf", "mixed"):
        a = generate(kind, seed=3, duration=1800.0)
        assert a == generate(kind, seed=3, duration=1800.0)
        assert a != generate(kind, seed=4, duration=1800.0)
        assert a and all(x.t <= y.t for x, y in zip(a, a[1:]))
        assert all(0 <= x.start <= x.end < x.size for x in a)
    with pytest.raises(ValueError, match="periodic, zipf, mixed"):
        generate("bursty")
    with pytest.raises(ValueError, match="unknown workload parameters: colour"):
        generate("zipf", colour="red")


def test_dataset_shards_are_read_in_order_within_an_epoch():
    a = generate("periodic", seed=1, duration=3600.0, jobs=0)
    reads = [x.key for x in a if x.start == 0 and x.bucket == "train-data"]
    per_ds = collections.defaultdict(list)
    for k in reads:
        per_ds[k.split("/")[1]].append(k)
    for keys in per_ds.values():
        # Order only wraps around at an epoch's end.
        wraps = sum(1 for x, y in zip(keys, keys[1:]) if y <= x)
        assert wraps <= len(keys) // 20 + 1


def test_labels_say_whether_the_object_is_read_within_the_horizon():
    accesses = generate("mixed", seed=2, duration=2 * 3600.0)
    tracker = FeatureTracker()
    X, y, T = build_dataset(accesses, horizon=300.0, sample_every=60.0, tracker=tracker)
    assert X.shape == (len(y), len(FEATURES)) and X.dtype == np.float32 and len(T) == len(y)
    assert 0 < y.mean() < 1
    times = collections.defaultdict(list)
    for a in accesses:
        times[(a.bucket, a.key)].append(a.t)
    # Rebuild the candidate list of a few sample times and check each label from the raw times.
    checked = 0
    replay = FeatureTracker()
    listings = Listings(accesses)
    i = 0
    rows_at = {t: np.flatnonzero(T == t) for t in np.unique(T)[::15]}
    for t in np.unique(T).tolist():
        while i < len(accesses) and accesses[i].t <= t:
            listings.observe(accesses[i])
            replay.observe(accesses[i])
            i += 1
        replay.look_ahead(listings.known, t, 60.0, small_set=0)
        cands = replay.candidates(t)
        if t not in rows_at:
            continue
        assert len(cands) == len(rows_at[t])
        for obj, row in zip(cands, rows_at[t]):
            ts = times[obj]
            k = bisect.bisect_right(ts, t)
            assert y[row] == (k < len(ts) and ts[k] <= t + 300.0)
            checked += 1
    assert checked > 100


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "p.onnx"
    metrics = train(generate("mixed", seed=11, duration=3 * 3600.0), out, progress=False, seed=0,
                    max_rows=20_000)
    return out, metrics


def test_training_beats_chance_on_the_later_slice_and_the_file_matches_sklearn(trained):
    out, m = trained
    assert m["auc"] > 0.8
    # Picking p >= 0.7 finds reads far more often than picking candidates at random would.
    assert m["precision"] > 2 * m["positive_rate"] and m["recall"] > 0.2
    assert m["train_samples"] > m["test_samples"] > 1000
    assert m["onnx_max_abs_diff"] < 1e-4
    p = Predictor.load(out)
    assert p.features == FEATURES and p.horizon == 300.0
    assert p.metrics()["auc"] == pytest.approx(m["auc"])


def test_model_generalises_to_a_workload_it_never_saw(trained):
    out, _ = trained
    X, y, _ = build_dataset(generate("periodic", seed=99, duration=2 * 3600.0), max_rows=10_000)
    assert evaluate(y, Predictor.load(out).score(X))["auc"] > 0.8


def _tiny_model(features: list[str] | None, tmp_path, name="m.onnx"):
    from sklearn.ensemble import GradientBoostingClassifier
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    n = len(features) if features else len(FEATURES)
    rng = np.random.default_rng(0)
    X = rng.random((200, n)).astype(np.float32)
    model = GradientBoostingClassifier(n_estimators=3, max_depth=2).fit(X, X[:, 0] > 0.5)
    onx = to_onnx(model, initial_types=[("X", FloatTensorType([None, n]))],
                  options={id(model): {"zipmap": False}}, target_opset=17)
    if features is not None:
        prop = onx.metadata_props.add()
        prop.key, prop.value = META_FEATURES, json.dumps(features)
    path = tmp_path / name
    path.write_bytes(onx.SerializeToString())
    return path


def test_a_model_with_another_schema_is_refused_with_a_clear_message(tmp_path):
    wrong = [*FEATURES[:-1], "colour"]
    path = _tiny_model(wrong, tmp_path)
    with pytest.raises(ModelSchemaError) as e:
        Predictor.load(path)
    msg = str(e.value)
    assert str(path) in msg
    assert f"missing ['{FEATURES[-1]}']" in msg and "unknown ['colour']" in msg
    assert f"expected {list(FEATURES)}" in msg and f"found {wrong}" in msg

    fewer = _tiny_model(["hotness", "size_log2"], tmp_path, "fewer.onnx")
    with pytest.raises(ModelSchemaError, match="found \\['hotness', 'size_log2'\\]"):
        Predictor.load(fewer)

    reordered = _tiny_model([FEATURES[1], FEATURES[0], *FEATURES[2:]], tmp_path, "order.onnx")
    with pytest.raises(ModelSchemaError, match="same names in another order"):
        Predictor.load(reordered)


def test_a_model_without_schema_or_not_a_model_is_refused(tmp_path):
    with pytest.raises(ModelSchemaError, match="has no feature schema"):
        Predictor.load(_tiny_model(None, tmp_path))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="junk.onnx is not a model"):
        Predictor.load(junk)
    with pytest.raises(ModelError, match="cannot read the predictor model"):
        Predictor.load(tmp_path / "missing.onnx")


def test_the_shipped_model_loads_and_scores_a_feature_matrix():
    path = shipped_model_path()
    assert path.is_file() and path.stat().st_size < 2 * 1024**2
    p = Predictor.load()
    assert p.path == path and p.features == FEATURES
    meta = {m.key: m.value for m in onnx.load(str(path)).metadata_props}
    assert float(meta[META_HORIZON]) == 300.0
    tracker = FeatureTracker()
    for a in generate("mixed", seed=5, duration=1800.0):
        tracker.observe(a)
    now = a.t
    cands = tracker.candidates(now)
    scores = p.score(tracker.matrix(cands, now, lambda o: 0.0))
    assert scores.shape == (len(cands),) and scores.dtype == np.float32
    assert ((scores >= 0) & (scores <= 1)).all()
    # A workload with epochs and scheduled jobs has candidates the model is sure about either way.
    assert scores.max() > 0.7 and scores.min() < 0.3
    with pytest.raises(ValueError, match=f"takes \\(n, {len(FEATURES)}\\)"):
        p.score(np.zeros((2, 3), np.float32))
    assert p.score(np.zeros((0, len(FEATURES)), np.float32)).shape == (0,)


def test_sidecar_train_on_an_access_log_end_to_end(tmp_path, capsys):
    logdir = tmp_path / "access-log"
    log = AccessLog(logdir, file_max_bytes=256 * 1024, files_kept=100)
    accesses = generate("periodic", seed=7, duration=2 * 3600.0)
    for a in accesses:
        log.record(a)
        if len(log) % 1000 == 0:
            log.flush()
    log.close()
    assert len(list(logdir.iterdir())) > 1 and len(list(read_log(logdir))) == len(accesses)
    out = tmp_path / "predictor.onnx"
    rc = cli.main(["train", "--log", str(logdir), "--out", str(out), "--horizon", "5m",
                   "--max-rows", "8000", "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0, text
    line = next(ln for ln in text.splitlines() if ln.startswith("AUC"))
    auc = float(line.split()[1])
    assert auc > 0.8
    assert Predictor.load(out).metrics()["auc"] == pytest.approx(auc, abs=1e-4)


def test_sidecar_train_refuses_bad_input(tmp_path, capsys):
    assert cli.main(["train", "--log", str(tmp_path / "nope"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["train", "--log", str(tmp_path / "empty"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "no reads" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--log", str(tmp_path), "--out", "m.onnx", "--horizon", "soon"])
    assert "is not a duration" in capsys.readouterr().err
