"""include/mlops_core/gate.py: thresholds, champion vs challenger, every reason kept, the card."""

from __future__ import annotations

import json
import math
from html import escape
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from include.mlops_core.config import DatasetConfig
from include.mlops_core.gate import Decision, decide, promotion_card, render_card_html
from tests.unit.helpers import churn_config, regression_config

GOOD = {"accuracy": 0.80, "f1": 0.60, "roc_auc": 0.85, "log_loss": 0.40}


def gated(thresholds: list[str] | None = None, margin: float = 0.0,
          metric: str = "roc_auc") -> DatasetConfig:
    return churn_config(gate={"thresholds": ["roc_auc >= 0.7", "accuracy >= 0.65"]
                              if thresholds is None else thresholds,
                              "champion_margin": margin, "champion_metric": metric})


def champion(version: str = "3", **metrics: float) -> dict[str, Any]:
    return {"version": version, "run_id": "r-old", "metrics": {**GOOD, **metrics}}


def check(decision: Decision, name: str) -> Any:
    (found,) = [c for c in decision.checks if c.name == name]
    return found


# -- thresholds -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("challenger", "approved", "failed"),
    [
        pytest.param(GOOD, True, [], id="all-pass"),
        pytest.param({**GOOD, "roc_auc": 0.70}, True, [], id="at-the-threshold"),
        pytest.param({**GOOD, "roc_auc": 0.69}, False, ["threshold roc_auc >= 0.7"], id="auc-low"),
        pytest.param({**GOOD, "roc_auc": 0.5, "accuracy": 0.5}, False,
                     ["threshold roc_auc >= 0.7", "threshold accuracy >= 0.65"], id="both-low"),
        pytest.param({**GOOD, "roc_auc": float("nan")}, False, ["threshold roc_auc >= 0.7"],
                     id="nan-metric"),
        pytest.param({"accuracy": 0.9}, False, ["threshold roc_auc >= 0.7"], id="metric-absent"),
    ],
)
def test_thresholds(challenger: dict[str, float], approved: bool, failed: list[str]) -> None:
    decision = decide(gated(), challenger, None)
    assert decision.approved is approved
    assert [c.name for c in decision.checks if not c.passed] == failed


def test_threshold_detail_shows_the_observed_value() -> None:
    decision = decide(gated(), {**GOOD, "roc_auc": 0.6123}, None)
    assert "FAIL threshold roc_auc >= 0.7: observed 0.6123" in decision.reasons
    assert "PASS threshold accuracy >= 0.65: observed 0.8000" in decision.reasons


def test_first_model_is_approved_when_thresholds_pass() -> None:
    decision = decide(gated(), GOOD, None)
    assert decision.approved
    comparison = check(decision, "champion comparison")
    assert comparison.passed and "no champion yet" in comparison.detail


def test_no_thresholds_and_no_champion_is_approved() -> None:
    assert decide(gated(thresholds=[]), {}, None).approved


# -- champion vs challenger -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("new", "old", "margin", "approved"),
    [
        pytest.param(0.80, 0.79, 0.0, True, id="better"),
        pytest.param(0.79, 0.79, 0.0, False, id="equal-is-not-better"),
        pytest.param(0.78, 0.79, 0.0, False, id="worse"),
        pytest.param(0.790001, 0.79, 0.0, True, id="barely-better-no-margin"),
        pytest.param(0.795, 0.79, 0.01, False, id="better-but-below-margin"),
        pytest.param(0.75, 0.5, 0.25, True, id="exactly-the-margin"),
        pytest.param(0.90, 0.79, 0.01, True, id="above-margin"),
    ],
)
def test_champion_comparison_higher_is_better(new: float, old: float, margin: float,
                                              approved: bool) -> None:
    decision = decide(gated(thresholds=[], margin=margin), {**GOOD, "roc_auc": new},
                      champion(roc_auc=old))
    assert decision.approved is approved
    detail = check(decision, "champion comparison").detail
    assert f"roc_auc challenger {new:.4f} vs champion v3 {old:.4f}" in detail
    assert f"improvement {new - old:+.4f}, required > 0 and >= {margin:g}" in detail


@pytest.mark.parametrize(
    ("build", "metric", "new", "old", "approved"),
    [
        pytest.param(lambda: gated(thresholds=[], metric="log_loss"), "log_loss", 0.30, 0.40, True,
                     id="log-loss-lower-wins"),
        pytest.param(lambda: gated(thresholds=[], metric="log_loss"), "log_loss", 0.45, 0.40, False,
                     id="log-loss-higher-loses"),
        pytest.param(lambda: regression_config(gate={"thresholds": []}), "rmse", 9.0, 10.0, True,
                     id="rmse-lower-wins"),
        pytest.param(lambda: regression_config(gate={"thresholds": [], "champion_margin": 0.5}),
                     "rmse", 9.8, 10.0, False, id="rmse-lower-but-below-margin"),
        pytest.param(lambda: regression_config(gate={"thresholds": [], "champion_metric": "r2"}),
                     "r2", 0.6, 0.5, True, id="r2-higher-wins"),
    ],
)
def test_champion_comparison_respects_metric_direction(
        build: Any, metric: str, new: float, old: float, approved: bool) -> None:
    decision = decide(build(), {metric: new}, {"version": "1", "metrics": {metric: old}})
    assert decision.approved is approved


def test_champion_that_could_not_be_scored_rejects() -> None:
    broken = {"version": "4", "run_id": "r", "error": "ValueError: columns missing: plan_tier"}
    decision = decide(gated(), GOOD, broken)
    assert not decision.approved
    comparison = check(decision, "champion comparison")
    assert not comparison.passed
    assert "champion v4 could not be evaluated on the same held-out rows" in comparison.detail
    assert "columns missing: plan_tier" in comparison.detail


@pytest.mark.parametrize(
    ("challenger", "champion_metrics"),
    [
        pytest.param({**GOOD, "roc_auc": float("nan")}, GOOD, id="challenger-nan"),
        pytest.param(GOOD, {**GOOD, "roc_auc": float("nan")}, id="champion-nan"),
        pytest.param(GOOD, {"accuracy": 0.5}, id="champion-lacks-metric"),
    ],
)
def test_uncomparable_metrics_reject(challenger: dict[str, float],
                                     champion_metrics: dict[str, float]) -> None:
    decision = decide(gated(thresholds=[]), challenger, {"version": "2", "metrics": champion_metrics})
    assert not decision.approved


def test_every_check_must_pass() -> None:
    passes_thresholds_loses_to_champion = decide(gated(), GOOD, champion(roc_auc=0.90))
    beats_champion_fails_threshold = decide(gated(), {**GOOD, "accuracy": 0.5}, champion(roc_auc=0.8))
    assert not passes_thresholds_loses_to_champion.approved
    assert not beats_champion_fails_threshold.approved
    assert check(beats_champion_fails_threshold, "champion comparison").passed


@settings(max_examples=200, deadline=None)
@given(old=st.floats(0, 1), new=st.floats(0, 1), better=st.floats(0, 1),
       margin=st.floats(0, 0.5))
def test_a_better_challenger_is_never_rejected_where_a_worse_one_was_approved(
        old: float, new: float, better: float, margin: float) -> None:
    """Monotonic in the challenger's metric (roc_auc: higher is better)."""
    better = max(new, better)
    config = gated(thresholds=[], margin=margin)
    if decide(config, {"roc_auc": new}, champion(roc_auc=old)).approved:
        assert decide(config, {"roc_auc": better}, champion(roc_auc=old)).approved
        assert new > old


# -- reasons, log line, card ------------------------------------------------------------------------
def test_log_line_holds_every_reason() -> None:
    decision = decide(gated(), {**GOOD, "accuracy": 0.5}, champion(roc_auc=0.9))

    line = decision.log_line("churn_demo")

    assert line.startswith("Gate REJECTED for churn_demo: ")
    assert len(decision.reasons) == 3
    for reason in decision.reasons:
        assert reason in line
    assert [r.split(" ", 1)[0] for r in decision.reasons] == ["PASS", "FAIL", "FAIL"]
    assert decide(gated(), GOOD, None).log_line("m").startswith("Gate APPROVED for m: ")


def test_decision_as_dict_is_json() -> None:
    decision = decide(gated(), GOOD, champion(roc_auc=0.5))
    payload = json.loads(json.dumps(decision.as_dict()))
    assert payload["approved"] is True
    assert payload["reasons"] == decision.reasons
    assert [c["name"] for c in payload["checks"]] == [
        "threshold roc_auc >= 0.7", "threshold accuracy >= 0.65", "champion comparison"]


def test_promotion_card_and_html() -> None:
    config = gated().model_copy(update={"model_name": "churn<script>"})
    old = champion(roc_auc=0.80)
    decision = decide(config, GOOD, old)
    card = promotion_card(config=config, decision=decision,
                          challenger={"mlflow_run_id": "r-new", "metrics": GOOD},
                          champion=old, context={"dag_run_id": "manual__1", "triggered_by": "alice"})

    assert json.loads(json.dumps(card)) == card
    assert card["model_name"] == "churn<script>"
    assert card["decision"]["approved"] is True
    assert card["gate_config"]["thresholds"][0] == {"metric": "roc_auc", "op": ">=", "value": 0.7}
    assert card["dag_run_id"] == "manual__1"

    html = render_card_html(card)
    assert "<script>" not in html and "churn&lt;script&gt;" in html
    assert "APPROVED" in html
    assert "<td>roc_auc</td><td>0.8500</td><td>0.8000</td>" in html
    assert "manual__1" in html and "alice" in html
    for reason_check in decision.checks:
        assert f"<td>{escape(reason_check.name)}</td><td>{escape(reason_check.detail)}</td>" in html


def test_card_html_for_first_model_shows_no_champion_values() -> None:
    decision = decide(gated(), {**GOOD, "roc_auc": 0.6}, None)
    card = promotion_card(config=gated(), decision=decision, challenger={"metrics": GOOD},
                          champion=None, context={})
    html = render_card_html(card)
    assert "REJECTED" in html
    assert "<td>roc_auc</td><td>0.8500</td><td>-</td>" in html
    assert not math.isnan(card["challenger"]["metrics"]["roc_auc"])


def test_champion_comparison_uses_rows_outside_the_champions_training_data() -> None:
    """All held-out rows favour the champion (it trained on some of them); on the rows it never
    saw, the challenger is better: the gate compares there and says so."""
    config = churn_config(gate={"thresholds": [], "champion_metric": "roc_auc"})
    champion = {"version": "1", "metrics": {"roc_auc": 0.80}, "rows": 400,
                "excluded_partitions": ["date=2025-01-01"],
                "challenger_metrics": {"roc_auc": 0.82}}
    decision = decide(config, {"roc_auc": 0.78}, champion)
    assert decision.approved
    assert "on 400 held-out rows outside its training partitions (date=2025-01-01 left out)" \
        in decision.reasons[-1]
    assert "challenger 0.8200 vs champion v1 0.8000" in decision.reasons[-1]


def test_a_card_decided_under_a_loosened_gate_says_so_in_red() -> None:
    decision = decide(gated(), GOOD, None)
    why = ["gate threshold roc_auc >= 0.7 replaced by roc_auc >= 0"]
    card = promotion_card(config=gated(), decision=decision, challenger={"metrics": GOOD},
                          champion=None, context={}, loosened=why)
    assert card["loosened_gate"] == why
    html = render_card_html(card)
    banner = html[html.index('<div class="loosened"'):html.index("</div>")]
    assert "background:#cf222e" in banner and "LOOSENED gate" in banner
    assert escape(why[0]) in banner
    plain = render_card_html(promotion_card(config=gated(), decision=decision,
                                            challenger={"metrics": GOOD}, champion=None,
                                            context={}))
    assert "LOOSENED" not in plain


def test_card_shows_lineage_and_embeds_the_pictures() -> None:
    """What the model was trained from, and the evaluation's plot inside the page itself (a
    card read from MLflow or S3 has no other file beside it)."""
    import base64

    from include.mlops_core.gate import LINEAGE_FILES, lineage

    files = [{"key": f"date=2025-01-{d:02d}/part-0.csv", "uri": "s3://x", "size": 100 + d,
              "etag": "e", "rows": 10} for d in range(1, 26)]
    repro = {"data": {"partitions": ["date=2025-01-01", "date=2025-01-02"], "files": files,
                      "source_uri": "s3://mlops-data/churn", "row_count": 250,
                      "fingerprint": "f" * 64, "snapshot_uri": "s3://mlops/snap.parquet"},
             "code_version": "git:abc", "source_hash": "s" * 64,
             "params": {"training": {"family": "random_forest", "seed": 42}},
             "packages": {"scikit-learn": "1.9.1"}}
    found = lineage(repro, image="sha256:1234")
    assert found["partitions"] == ["date=2025-01-01", "date=2025-01-02"]
    assert len(found["files"]) == LINEAGE_FILES and found["files_total"] == 25
    assert found["image"] == "trainer image sha256:1234"
    assert lineage(repro)["image"].startswith("in-process")

    png = b"\x89PNG\r\n\x1a\nfake"
    card = promotion_card(config=gated(), decision=decide(gated(), GOOD, None),
                          challenger={"metrics": GOOD}, champion=None,
                          context={"logical_date": "none", "triggered_by": "asset event x"},
                          lineage=found, plots=["s3://mlops/run/confusion_matrix.png"])
    assert json.loads(json.dumps(card)) == card
    html = render_card_html(card, images={"confusion_matrix.png": png})
    assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in html
    assert "<h2>Lineage</h2>" in html and "date=2025-01-01, date=2025-01-02" in html
    assert "date=2025-01-20/part-0.csv" in html and "date=2025-01-21/part-0.csv" not in html
    assert "and 5 more" in html and "git:abc" in html and "sha256:1234" in html
    assert '{"family": "random_forest", "seed": 42}'.replace('"', "&quot;") in html
    assert "None" not in html
