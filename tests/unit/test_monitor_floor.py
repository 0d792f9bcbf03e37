"""The live performance floor: which bars a day's metrics miss, and which they cannot measure."""

from __future__ import annotations

import numpy as np

from include.mlops_core.config import MonitoringConfig
from include.mlops_core.metrics import Scores, compute
from include.mlops_core.monitor import floor_check


def _floor(*bars: str):
    return MonitoringConfig(performance_floor=list(bars)).performance_floor


def test_bars_met_and_missed_report_the_observed_value():
    failed, unmeasured = floor_check(_floor("roc_auc >= 0.7", "accuracy >= 0.9"),
                                     {"roc_auc": 0.81, "accuracy": 0.8512, "rows": 100.0})
    assert failed == ["accuracy >= 0.9 (observed 0.8512)"] and unmeasured == []


def test_a_day_whose_labels_hold_one_class_leaves_roc_auc_unchecked_not_below_the_floor():
    labels = np.array([2, 2, 2, 2])
    proba = np.array([[0.1, 0.2, 0.7], [0.3, 0.3, 0.4], [0.6, 0.2, 0.2], [0.1, 0.1, 0.8]])
    observed = compute("classification", labels,
                       Scores(proba.argmax(axis=1), proba=proba, classes=[0, 1, 2]))
    assert np.isnan(observed["roc_auc"])  # undefined with a single class: not a score of 0
    failed, unmeasured = floor_check(_floor("roc_auc >= 0.7", "accuracy >= 0.9"), observed)
    assert unmeasured == ["roc_auc"]
    assert failed == [f"accuracy >= 0.9 (observed {observed['accuracy']:.4f})"]


def test_a_metric_not_measured_at_all_fails_its_bar():
    failed, unmeasured = floor_check(_floor("roc_auc >= 0.7"), {})
    assert failed == ["roc_auc >= 0.7 (not measured: no labelled rows of the champion)"]
    assert unmeasured == []
