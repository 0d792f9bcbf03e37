"""include/mlops_core/scoring.py: canary assignment by hash, served and shadow frames per rollout mode,
agreement, and reading a committed predictions partition (local store)."""

from __future__ import annotations

import hashlib
import json
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from include.mlops_core import modeling
from include.mlops_core.config import DatasetConfig
from include.mlops_core.errors import DataError
from include.mlops_core.ingest import to_parquet_bytes
from include.mlops_core.scoring import (
    CHALLENGER,
    CHAMPION,
    MARKER,
    ModelRef,
    agreement,
    canary_mask,
    predictions_dir,
    read_committed,
    score_frame,
)
from include.mlops_core.storage import ObjectStore, join
from tests.unit.helpers import DAY, churn_config, demo_frame, regression_config

KEYS = pd.Series([f"C{i:06d}" for i in range(20_000)])


# -- canary_mask ------------------------------------------------------------------------------------
def test_canary_mask_is_deterministic_across_calls() -> None:
    first = canary_mask(KEYS, 0.2, "churn_demo")
    second = canary_mask(KEYS.copy(), 0.2, "churn_demo")
    assert first.dtype == bool and len(first) == len(KEYS)
    assert np.array_equal(first, second)


def test_canary_mask_does_not_depend_on_row_order_or_index() -> None:
    mask = pd.Series(canary_mask(KEYS, 0.2, "churn_demo"), index=KEYS.to_numpy())
    shuffled = KEYS.sample(frac=1.0, random_state=3)  # keeps a scrambled index
    shuffled_mask = canary_mask(shuffled, 0.2, "churn_demo")
    assert np.array_equal(shuffled_mask, mask.loc[shuffled.to_numpy()].to_numpy())
    # a single key scored alone lands in the same arm as in the full batch
    for key in KEYS.iloc[:50]:
        assert canary_mask(pd.Series([key]), 0.2, "churn_demo")[0] == mask[key]


@pytest.mark.parametrize("key", ["C000000", "C000001", "C012345", "42"])
def test_canary_mask_matches_the_documented_hash(key: str) -> None:
    """Hand check of the docstring: sha256("salt:key") as a number in [0, 1) below the share."""
    value = int.from_bytes(hashlib.sha256(f"model-x:{key}".encode()).digest()[:8], "big") / 2**64
    for share in (0.05, 0.2, 0.5):
        assert canary_mask(pd.Series([key]), share, "model-x")[0] == (value < share)


@pytest.mark.parametrize("share", [0.0, -0.1])
def test_zero_share_selects_no_row(share: float) -> None:
    mask = canary_mask(KEYS, share, "churn_demo")
    assert mask.dtype == bool and len(mask) == len(KEYS) and not mask.any()


def test_canary_share_is_close_to_the_requested_share() -> None:
    share = canary_mask(KEYS, 0.2, "churn_demo").mean()
    assert abs(share - 0.2) <= 0.02


def test_a_different_salt_gives_a_different_assignment() -> None:
    a = canary_mask(KEYS, 0.2, "churn_demo")
    b = canary_mask(KEYS, 0.2, "other_model")
    assert (a != b).sum() > 1000  # independent hashes: about 32 % of the keys change arm
    assert abs(b.mean() - 0.2) <= 0.02


def test_growing_the_share_only_adds_keys() -> None:
    small = canary_mask(KEYS, 0.1, "churn_demo")
    large = canary_mask(KEYS, 0.2, "churn_demo")
    assert small.sum() > 0 and large.sum() > small.sum()
    assert not (small & ~large).any()  # every key of the 10 % canary stays in the 20 % canary


def test_numeric_and_string_keys_hash_alike() -> None:
    assert np.array_equal(canary_mask(pd.Series(range(500)), 0.3, "m"),
                          canary_mask(pd.Series([str(i) for i in range(500)]), 0.3, "m"))


# -- score_frame ------------------------------------------------------------------------------------
def features(frame: pd.DataFrame, config: DatasetConfig) -> pd.DataFrame:
    return frame[[c.name for c in config.feature_columns]]


def family(name: str, hyperparameters: dict[str, Any]) -> DatasetConfig:
    """The churn config with another model family (its hyperparameters replace the YAML's)."""
    config = churn_config(training={"family": name})
    training = config.training.model_copy(update={"hyperparameters": hyperparameters})
    return config.model_copy(update={"training": training})


@pytest.fixture(scope="module")
def models() -> tuple[ModelRef, ModelRef]:
    """Two differently trained churn models: they disagree on some rows. Single-threaded
    families: quick to fit, no OpenMP thread pool on a busy machine."""
    config = family("logistic_regression", {})
    champ = modeling.train(demo_frame(config, rows=400), config)
    small = family("random_forest", {"n_estimators": 10, "max_depth": 3})
    chal = modeling.train(demo_frame(small, rows=400, day=date(2025, 1, 2), seed=3), small)
    return (ModelRef("churn_demo", "3", "run-champ", champ),
            ModelRef("churn_demo", "4", "run-chal", chal))


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    frame = demo_frame(churn_config(), rows=300, day=date(2025, 1, 5), seed=11)
    return frame.set_axis(range(1000, 1300))  # not a RangeIndex from 0: must not matter


def rollout(mode: str, share: float = 0.2) -> DatasetConfig:
    return churn_config(rollout={"mode": mode, "canary_share": share}).scoring_view()


def expected(model: ModelRef, frame: pd.DataFrame, config: DatasetConfig) -> tuple[Any, Any]:
    x = features(frame, config)
    return model.model.predict(x), model.model.predict_proba(x)[:, 1]


def test_models_disagree_on_some_rows(models: tuple[ModelRef, ModelRef], rows: pd.DataFrame) -> None:
    """Precondition of the arm tests below: otherwise they could not tell the models apart."""
    config = rollout("direct")
    champ, chal = expected(models[0], rows, config)[0], expected(models[1], rows, config)[0]
    assert (champ != chal).sum() >= 10


def test_direct_mode_serves_the_champion_only(models: tuple[ModelRef, ModelRef],
                                              rows: pd.DataFrame) -> None:
    """Direct rollout: score() passes no challenger, so there is no shadow frame."""
    config = rollout("direct")
    served, shadow = score_frame(rows, config, models[0], None, day=DAY, scoring_run_id="s-1")

    assert shadow is None
    prediction, score = expected(models[0], rows, config)
    assert len(served) == len(rows)
    assert (served["arm"] == CHAMPION).all()
    assert (served["model_version"] == "3").all() and (served["model_run_id"] == "run-champ").all()
    assert np.array_equal(served["prediction"].to_numpy(), prediction)
    assert np.allclose(served["score"].to_numpy(), score)
    assert served["customer_id"].tolist() == rows["customer_id"].tolist()
    assert set(served["partition_date"]) == {DAY.isoformat()}
    assert set(served["scoring_run_id"]) == {"s-1"}
    assert set(served["model_name"]) == {"churn_demo"}
    # even handed a challenger, direct rollout serves no row from it
    with_challenger, _ = score_frame(rows, config, models[0], models[1], day=DAY,
                                     scoring_run_id="s-1")
    pd.testing.assert_frame_equal(with_challenger, served)


def test_no_challenger_means_no_shadow(models: tuple[ModelRef, ModelRef], rows: pd.DataFrame) -> None:
    for mode in ("direct", "shadow", "canary"):
        served, shadow = score_frame(rows, rollout(mode), models[0], None, day=DAY,
                                     scoring_run_id="s")
        assert shadow is None
        assert (served["arm"] == CHAMPION).all(), mode


def test_shadow_mode_serves_the_champion_and_stores_the_challenger(
        models: tuple[ModelRef, ModelRef], rows: pd.DataFrame) -> None:
    config = rollout("shadow")
    served, shadow = score_frame(rows, config, models[0], models[1], day=DAY, scoring_run_id="s-2")

    champ_pred, champ_score = expected(models[0], rows, config)
    chal_pred, chal_score = expected(models[1], rows, config)
    assert (served["arm"] == CHAMPION).all()
    assert np.array_equal(served["prediction"].to_numpy(), champ_pred)
    assert np.allclose(served["score"].to_numpy(), champ_score)

    assert shadow is not None and len(shadow) == len(rows)
    assert shadow["customer_id"].tolist() == rows["customer_id"].tolist()
    assert np.array_equal(shadow["prediction"].to_numpy(), chal_pred)
    assert np.allclose(shadow["score"].to_numpy(), chal_score)
    assert np.array_equal(shadow["champion_prediction"].to_numpy(), champ_pred)
    assert np.allclose(shadow["champion_score"].to_numpy(), champ_score)
    assert (shadow["model_version"] == "4").all() and (shadow["model_run_id"] == "run-chal").all()
    assert set(shadow["partition_date"]) == {DAY.isoformat()}


def test_canary_mode_serves_the_challenger_on_the_canary_rows(
        models: tuple[ModelRef, ModelRef], rows: pd.DataFrame) -> None:
    config = rollout("canary", share=0.3)
    served, shadow = score_frame(rows, config, models[0], models[1], day=DAY, scoring_run_id="s-3")

    canary = canary_mask(rows["customer_id"], 0.3, config.registered_model_name)
    assert 0.15 < canary.mean() < 0.45
    champ_pred, champ_score = expected(models[0], rows, config)
    chal_pred, chal_score = expected(models[1], rows, config)
    assert shadow is not None and len(shadow) == len(rows)
    assert np.array_equal(served["arm"].to_numpy() == CHALLENGER, canary)
    on, off = served[canary], served[~canary]
    assert np.array_equal(on["prediction"].to_numpy(), chal_pred[canary])
    assert np.allclose(on["score"].to_numpy(), chal_score[canary])
    assert set(on["model_version"]) == {"4"} and set(on["model_run_id"]) == {"run-chal"}
    assert np.array_equal(off["prediction"].to_numpy(), champ_pred[~canary])
    assert np.allclose(off["score"].to_numpy(), champ_score[~canary])
    assert set(off["arm"]) == {CHAMPION}
    assert set(off["model_version"]) == {"3"} and set(off["model_run_id"]) == {"run-champ"}
    # the two models disagree on some canary rows, so the served output really changed there
    assert (on["prediction"].to_numpy() != champ_pred[canary]).any()


def test_canary_rows_are_the_same_entities_on_every_run(models: tuple[ModelRef, ModelRef],
                                                         rows: pd.DataFrame) -> None:
    config = rollout("canary")
    first, _ = score_frame(rows, config, models[0], models[1], day=DAY, scoring_run_id="a")
    reordered = rows.iloc[::-1]
    second, _ = score_frame(reordered, config, models[0], models[1], day=date(2025, 1, 6),
                            scoring_run_id="b")
    arm = dict(zip(first["customer_id"], first["arm"], strict=True))
    assert dict(zip(second["customer_id"], second["arm"], strict=True)) == arm


def test_scoring_frame_without_the_target_column(models: tuple[ModelRef, ModelRef],
                                                 rows: pd.DataFrame) -> None:
    """Scoring rows have no label: the served frame must not need one."""
    config = rollout("shadow")
    served, _ = score_frame(rows.drop(columns=["churned"]), config, models[0], models[1], day=DAY,
                            scoring_run_id="s")
    assert len(served) == len(rows) and "churned" not in served.columns


# -- agreement --------------------------------------------------------------------------------------
def test_agreement_for_classification() -> None:
    shadow = pd.DataFrame({"prediction": [1, 0, 1, 1], "champion_prediction": [1, 1, 1, 0]})
    assert agreement(shadow, churn_config()) == 0.5


def test_agreement_for_regression_allows_one_percent() -> None:
    shadow = pd.DataFrame({"prediction": [100.0, 100.9, 102.0, 50.0],
                           "champion_prediction": [100.0, 100.0, 100.0, 100.0]})
    assert agreement(shadow, regression_config()) == 0.5


def test_agreement_of_no_rows_is_nan() -> None:
    empty = pd.DataFrame({"prediction": [], "champion_prediction": []})
    assert np.isnan(agreement(empty, churn_config()))


def test_agreement_of_a_scored_shadow(models: tuple[ModelRef, ModelRef], rows: pd.DataFrame) -> None:
    config = rollout("shadow")
    _, shadow = score_frame(rows, config, models[0], models[1], day=DAY, scoring_run_id="s")
    champ, chal = expected(models[0], rows, config)[0], expected(models[1], rows, config)[0]
    assert shadow is not None
    assert agreement(shadow, config) == pytest.approx((champ == chal).mean())
    assert agreement(shadow, config) < 1.0


# -- read_committed ---------------------------------------------------------------------------------
def commit(store: ObjectStore, artifacts: str, frame: pd.DataFrame, rows: int) -> str:
    folder = predictions_dir(artifacts, "churn_demo", DAY)
    uri = join(folder, "predictions.parquet")
    store.write_bytes(uri, to_parquet_bytes(frame))
    store.write_bytes(join(folder, MARKER),
                      json.dumps({"rows": rows, "predictions_uri": uri, "model_name": "churn_demo"})
                      .encode())
    return folder


def test_read_committed_returns_manifest_and_frame(tmp_path: Path) -> None:
    store, artifacts = ObjectStore(), str(tmp_path / "artifacts")
    frame = pd.DataFrame({"customer_id": ["a", "b", "c"], "prediction": [0, 1, 0]})
    folder = commit(store, artifacts, frame, rows=3)

    manifest, read = read_committed(store, artifacts, "churn_demo", DAY)

    assert folder == str(tmp_path / "artifacts" / "churn_demo" / "predictions" / "date=2025-01-01")
    assert manifest["rows"] == 3
    pd.testing.assert_frame_equal(read.reset_index(drop=True), frame)


def test_read_committed_without_marker_names_the_folder(tmp_path: Path) -> None:
    store, artifacts = ObjectStore(), str(tmp_path / "artifacts")
    folder = predictions_dir(artifacts, "churn_demo", DAY)
    # the parquet is there but the commit marker is not: a half-written partition
    store.write_bytes(join(folder, "predictions.parquet"),
                      to_parquet_bytes(pd.DataFrame({"prediction": [1]})))

    with pytest.raises(DataError, match="_SUCCESS.json") as err:
        read_committed(store, artifacts, "churn_demo", DAY)

    assert folder in str(err.value)
    assert "missing predictions partition" in str(err.value)
    assert err.value.runbook == "missing-partition.md"


def test_read_committed_with_a_row_count_mismatch_is_inconsistent(tmp_path: Path) -> None:
    store, artifacts = ObjectStore(), str(tmp_path / "artifacts")
    folder = commit(store, artifacts, pd.DataFrame({"prediction": [0, 1]}), rows=5)

    with pytest.raises(DataError, match="inconsistent") as err:
        read_committed(store, artifacts, "churn_demo", DAY)

    assert folder in str(err.value)
    assert "5 rows" in str(err.value) and "holds 2" in str(err.value)


def test_a_multiclass_model_keeps_every_class_probability_for_its_live_metrics() -> None:
    """A 3-class model's predictions carry each class's probability and the classes, so its
    live ROC AUC is a number (one-vs-rest, macro), also on a day whose labels lack a class:
    a performance floor on it reads a value, not NaN."""
    from sklearn.metrics import roc_auc_score

    from include.mlops_core.abtest import metric_values
    from include.mlops_core.ingest import read_parquet_bytes
    from include.mlops_core.monitor import _multi

    base = churn_config(target="contract", rollout={"mode": "shadow"},
                        gate={"thresholds": ["accuracy >= 0.1"]},
                        training={"family": "logistic_regression"})
    config = base.model_copy(update={"training": base.training.model_copy(
        update={"hyperparameters": {}})})
    champ = modeling.train(demo_frame(config, rows=400), config)
    chal = modeling.train(demo_frame(config, rows=400, day=date(2025, 1, 2), seed=3), config)
    frame = demo_frame(config, rows=300, day=date(2025, 1, 5), seed=11)
    served, shadow = score_frame(frame, config.scoring_view(),
                                 ModelRef("m", "1", "r1", champ), ModelRef("m", "2", "r2", chal),
                                 day=DAY, scoring_run_id="s")
    served = read_parquet_bytes(to_parquet_bytes(served))  # as monitoring reads it back
    shadow = read_parquet_bytes(to_parquet_bytes(shadow))

    assert json.loads(served["classes"].iloc[0]) == ["month_to_month", "one_year", "two_year"]
    labels = frame["contract"].to_numpy()
    values = metric_values("classification", labels, served["prediction"], served["score"],
                           **_multi(served))
    proba = champ.predict_proba(features(frame, config))
    assert values["roc_auc"] == pytest.approx(roc_auc_score(labels, proba, multi_class="ovr"),
                                              abs=1e-6)  # stored as float32
    shadow_values = metric_values("classification", labels, shadow["prediction"],
                                  shadow["score"], **_multi(shadow))
    assert 0 < shadow_values["roc_auc"] < 1 and 0 < shadow_values["log_loss"]
    two_classes = labels != "two_year"
    day = metric_values("classification", labels[two_classes],
                        served["prediction"][two_classes], served["score"][two_classes],
                        **_multi(served[two_classes]))
    assert not np.isnan(day["roc_auc"])
