"""Batch scoring with shadow and canary arms.

One day's rows are scored by the model behind ``@champion``. When ``@challenger`` exists it scores
the same rows too: in ``shadow`` rollout its predictions are stored beside the champion's and
never served; in ``canary`` rollout a fixed share of entities (a hash of the id column, so an
entity always lands in the same arm) is served by the challenger, and every row records its arm.

Output layout below ``<artifacts_uri>/<model>/``::

    predictions/date=YYYY-MM-DD/predictions.parquet   served predictions, one row per input row
    predictions/date=YYYY-MM-DD/_SUCCESS.json         commit marker + manifest, written last
    shadow/date=YYYY-MM-DD/shadow.parquet             challenger's predictions for every row

A re-run for the same day replaces these objects (same keys): no duplicates. Readers start from
``_SUCCESS.json``; it is removed before a re-run writes and put back last, so a reader never
takes a half-written partition for a complete one.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from include.mlops_core import ingest as ingestion
from include.mlops_core import tracking
from include.mlops_core.config import DatasetConfig
from include.mlops_core.errors import DataError
from include.mlops_core.storage import ObjectStore, join

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from include.mlops_core.pipeline import RunContext

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = tracking.CHAMPION, tracking.CHALLENGER
ROW_COLUMN = "row"  # entity key when the dataset declares no id_column
MARKER = "_SUCCESS.json"


@dataclass(frozen=True)
class ModelRef:
    """A registered model version, loaded once."""

    name: str
    version: str
    run_id: str
    model: Any


def predictions_dir(artifacts_uri: str, model_name: str, day: date) -> str:
    return join(artifacts_uri, model_name, "predictions", f"date={day.isoformat()}")


def shadow_uri(artifacts_uri: str, model_name: str, day: date) -> str:
    return join(artifacts_uri, model_name, "shadow", f"date={day.isoformat()}", "shadow.parquet")


def canary_mask(keys: pd.Series, share: float, salt: str) -> np.ndarray:
    """True for the rows whose entity falls in the canary: ``sha256(salt:key)`` as a number in
    [0, 1) below ``share``. Stable across runs, days and challengers of the same model.

    ``key`` is the value as ``keys.astype(str)`` writes it. Each distinct key is hashed once
    (``pandas.factorize``; string keys only when the first rows repeat some) and the first 8
    digest bytes are read back as big-endian unsigned integers in one ``numpy.frombuffer``: the
    same numbers, so the same split, as the original one ``int.from_bytes`` per row."""
    import numpy as np
    import pandas as pd

    if share <= 0:
        return np.zeros(len(keys), dtype=bool)
    if not len(keys):
        return np.zeros(0, dtype=bool)
    keys = pd.Series(keys) if not isinstance(keys, pd.Series) else keys
    if isinstance(keys.dtype, np.dtype) and keys.dtype.kind in "iub":
        # str() of a numpy integer or bool is one string per value: factorize first
        codes, uniques = pd.factorize(keys.to_numpy(), use_na_sentinel=False)
        strings = list(map(str, uniques.tolist()))
    else:  # e.g. 1 and 1.0 in an object column are one value but two strings: format first
        formatted = keys.astype(str).to_numpy(dtype=object)
        head = formatted[:4096]
        if len(formatted) > len(head) and len(set(head)) > 0.9 * len(head):
            codes, strings = None, formatted.tolist()  # mostly distinct: factorize would not pay
        else:
            codes, uniques = pd.factorize(formatted, use_na_sentinel=False)
            strings = uniques.tolist()
    prefix = f"{salt}:".encode()
    sha256 = hashlib.sha256
    digests = b"".join([sha256(prefix + s.encode()).digest()[:8] for s in strings])
    values = np.frombuffer(digests, dtype=">u8").astype(np.float64) / 2.0**64
    return values < share if codes is None else (values < share)[codes]


def predict(model: Any, features: pd.DataFrame, config: DatasetConfig) -> tuple[Any, Any]:
    """Predictions and, for classification, the positive-class probability (else NaN)."""
    prediction, score, _, _ = predict_all(model, features, config)
    return prediction, score


def predict_all(model: Any, features: pd.DataFrame, config: DatasetConfig
                ) -> tuple[Any, Any, list[Any] | None, str | None]:
    """:func:`predict`, plus, for a multi-class classifier, every class's probability per row
    and the classes (JSON) they belong to: what its live ROC AUC and log loss need."""
    import json

    import numpy as np

    prediction = model.predict(features)
    score = np.full(len(features), np.nan)
    proba_rows, classes = None, None
    if config.task == "classification" and hasattr(model, "predict_proba"):
        proba = model.predict_proba(features)
        if proba.shape[1] == 2:
            score = proba[:, 1]
        else:
            proba_rows = list(proba.astype("float32"))
            classes = json.dumps([c.item() if hasattr(c, "item") else c for c in model.classes_])
    return prediction, score, proba_rows, classes


def score_frame(frame: pd.DataFrame, config: DatasetConfig, champion: ModelRef,
                challenger: ModelRef | None, *, day: date,
                scoring_run_id: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Score ``frame``: (served predictions, challenger's shadow predictions or None)."""
    import numpy as np
    import pandas as pd

    key_column = config.id_column or ROW_COLUMN
    keys = frame[config.id_column] if config.id_column else pd.Series(np.arange(len(frame)))
    features = frame[[c.name for c in config.feature_columns]]
    champ_pred, champ_score, champ_proba, champ_classes = predict_all(champion.model, features,
                                                                      config)
    served = pd.DataFrame({key_column: keys.to_numpy(), "prediction": champ_pred,
                           "score": champ_score})
    if champ_proba is not None:  # multi-class: every class's probability, and which classes
        served["proba"], served["classes"] = champ_proba, champ_classes
    served["arm"] = CHAMPION
    served["model_version"] = champion.version
    served["model_run_id"] = champion.run_id
    shadow = None
    if challenger is not None:
        chal_pred, chal_score, chal_proba, chal_classes = predict_all(challenger.model,
                                                                      features, config)
        shadow = pd.DataFrame({key_column: keys.to_numpy(), "prediction": chal_pred,
                               "score": chal_score, "champion_prediction": champ_pred,
                               "champion_score": champ_score})
        if chal_proba is not None and champ_proba is not None:
            shadow["proba"], shadow["classes"] = chal_proba, chal_classes
            shadow["champion_proba"], shadow["champion_classes"] = champ_proba, champ_classes
        shadow["model_version"] = challenger.version
        shadow["model_run_id"] = challenger.run_id
        shadow["partition_date"] = day.isoformat()
        if config.rollout.mode == "canary":
            canary = canary_mask(keys, config.rollout.canary_share, config.registered_model_name)
            served.loc[canary, "prediction"] = chal_pred[canary]
            served.loc[canary, "score"] = chal_score[canary]
            if chal_proba is not None and champ_proba is not None:
                served["proba"] = [c if in_canary else p for p, c, in_canary
                                   in zip(champ_proba, chal_proba, canary, strict=True)]
                served.loc[canary, "classes"] = chal_classes
            served.loc[canary, "arm"] = CHALLENGER
            served.loc[canary, "model_version"] = challenger.version
            served.loc[canary, "model_run_id"] = challenger.run_id
    served["model_name"] = champion.name
    served["partition_date"] = day.isoformat()
    served["scoring_run_id"] = scoring_run_id
    return served, shadow


def agreement(shadow: pd.DataFrame, config: DatasetConfig) -> float:
    """Share of rows where challenger and champion predict the same (classification) or within
    1 % of the champion's value (regression)."""
    import numpy as np

    if config.task == "classification":
        same = shadow["prediction"].to_numpy() == shadow["champion_prediction"].to_numpy()
    else:
        champion = shadow["champion_prediction"].to_numpy(dtype=float)
        same = np.isclose(shadow["prediction"].to_numpy(dtype=float), champion, rtol=0.01)
    return float(same.mean()) if len(shadow) else float("nan")


# -- reading a committed partition -----------------------------------------------------------------
def read_committed(store: ObjectStore, artifacts_uri: str, model_name: str,
                   day: date) -> tuple[dict[str, Any], pd.DataFrame]:
    """The manifest and served predictions of one day; a clear error when it was never written."""
    import json

    folder = predictions_dir(artifacts_uri, model_name, day)
    marker = join(folder, MARKER)
    if not store.exists(marker):
        raise DataError(
            f"missing predictions partition: {folder} has no {MARKER} (model {model_name!r}, "
            f"date {day}). Run batch_scoring for {day} first (or wait for it to finish)",
            runbook="missing-partition.md")
    manifest = json.loads(store.read_bytes(marker))
    frame = ingestion.read_parquet_bytes(store.read_bytes(manifest["predictions_uri"]))
    if len(frame) != manifest["rows"]:
        raise DataError(f"predictions partition {folder} is inconsistent: {MARKER} says "
                        f"{manifest['rows']} rows, {manifest['predictions_uri']} holds {len(frame)}; "
                        "re-run batch_scoring for that date", runbook="missing-partition.md")
    return manifest, frame


# -- the stage --------------------------------------------------------------------------------------
def load_alias(client: Any, model_name: str, alias: str) -> ModelRef | None:
    """Resolve ``alias`` to a version first, then load that version: the alias may move meanwhile,
    and the rows must say which version really scored them."""
    from include.mlops_core.tracking import alias_version, load_version

    mv = alias_version(client, model_name, alias)
    if mv is None:
        return None
    model = load_version(client, model_name, mv.version)
    return ModelRef(model_name, str(mv.version), mv.run_id, model)


def score(run_ctx: RunContext, day: date) -> dict[str, Any]:
    """Score one day's partition and commit the predictions (and shadow) partition."""
    import json
    import time

    from include.mlops_core.errors import PromotionError

    started = time.monotonic()
    config, store, name = run_ctx.config, run_ctx.store, run_ctx.model_name
    champion = load_alias(run_ctx.client, name, CHAMPION)
    if champion is None:
        raise PromotionError(f"no model {name}@champion to score with: run the training DAG for "
                             f"dataset {config.name!r} first", runbook="promotion-failed.md")
    challenger = None
    if config.rollout.mode != "direct":
        challenger = load_alias(run_ctx.client, name, CHALLENGER)
        if challenger is not None and challenger.version == champion.version:
            challenger = None  # promoted already; nothing to compare
    view = config.scoring_view()
    result = ingestion.ingest(view, store, [day])
    frame = result.frame
    served, shadow = score_frame(frame, view, champion, challenger, day=day,
                                 scoring_run_id=run_ctx.mlflow_run_id)

    folder = predictions_dir(run_ctx.artifacts_uri, name, day)
    marker = join(folder, MARKER)
    predictions = join(folder, "predictions.parquet")
    shadow_path = shadow_uri(run_ctx.artifacts_uri, name, day)
    store.ensure_bucket(folder)
    store.delete(marker)  # uncommitted until the new marker is written
    store.write_bytes(predictions, ingestion.to_parquet_bytes(served))
    if shadow is not None:
        store.write_bytes(shadow_path, ingestion.to_parquet_bytes(shadow))
    else:
        store.delete(shadow_path)  # a re-run without a challenger leaves no stale shadow rows
    canary_rows = int((served["arm"] == CHALLENGER).sum())
    manifest = {
        "model_name": name, "partition_date": day.isoformat(), "rows": int(len(served)),
        "predictions_uri": predictions, "shadow_uri": shadow_path if shadow is not None else None,
        "champion_version": champion.version, "champion_run_id": champion.run_id,
        "challenger_version": challenger.version if challenger else None,
        "rollout": config.rollout.mode, "canary_rows": canary_rows,
        "input": {"fingerprint": result.manifest["fingerprint"],
                  "files": [f["uri"] for f in result.manifest["files"]]},
        "scoring_run_id": run_ctx.mlflow_run_id,
        "scored_at": datetime.now(UTC).isoformat(),
    }
    metrics: dict[str, float] = {"scoring.rows": len(served), "scoring.canary_rows": canary_rows,
                                 "scoring.seconds": time.monotonic() - started}
    if config.task == "classification":
        metrics["scoring.positive_rate"] = float((served["prediction"] == 1).mean())
    if shadow is not None:
        metrics["shadow.agreement"] = agreement(shadow, view)
        manifest["shadow_agreement"] = metrics["shadow.agreement"]
    store.write_bytes(marker, json.dumps(manifest, indent=2).encode())  # the commit

    client, run_id = run_ctx.client, run_ctx.mlflow_run_id
    for key, value in (("mlops.champion_version", champion.version),
                       ("mlops.challenger_version", challenger.version if challenger else "none"),
                       ("mlops.partition_date", day.isoformat()),
                       ("mlops.predictions_uri", predictions)):
        client.set_tag(run_id, key, value)
    run_ctx.log_metrics(metrics)
    client.log_dict(run_id, manifest, "scoring/manifest.json")
    from include.mlops_core.tracking import finish_run

    finish_run(client, run_id, outcome="scored")  # drift results are added to it later
    log.info("Scored %d rows of %s with %s v%s%s in %.1fs; predictions %s", len(served), day,
             name, champion.version,
             (f"; challenger v{challenger.version}: {config.rollout.mode}, "
              f"{canary_rows} rows served by it, agreement {metrics['shadow.agreement']:.3f}")
             if challenger else "", metrics["scoring.seconds"], predictions)
    return {"model_name": name, "partition_date": day.isoformat(), "partition_uri": folder,
            "predictions_uri": predictions, "model_version": champion.version,
            "challenger_version": challenger.version if challenger else None,
            "rows": int(len(served)), "canary_rows": canary_rows,
            "scoring_run_id": run_id, "dataset": config.name,
            "artifacts_uri": run_ctx.artifacts_uri}
