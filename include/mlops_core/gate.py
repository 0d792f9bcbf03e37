"""Quality gates and the promotion card.

``decide`` applies every declared threshold and the champion-vs-challenger comparison, and keeps
every reason. A model is approved only when every check passes.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from include.mlops_core.config import HIGHER_IS_BETTER, DatasetConfig


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Decision:
    approved: bool
    checks: list[Check] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        return [f"{'PASS' if c.passed else 'FAIL'} {c.name}: {c.detail}" for c in self.checks]

    def log_line(self, model_name: str) -> str:
        verdict = "APPROVED" if self.approved else "REJECTED"
        return f"Gate {verdict} for {model_name}: " + "; ".join(self.reasons)

    def as_dict(self) -> dict[str, Any]:
        return {"approved": self.approved, "checks": [asdict(c) for c in self.checks],
                "reasons": self.reasons}


def decide(config: DatasetConfig, challenger: dict[str, float],
           champion: dict[str, Any] | None, *, training_test: bool = True) -> Decision:
    """Apply thresholds, then champion-vs-challenger on the same held-out rows.

    :param challenger: the new model's held-out metrics
    :param champion: ``None`` when no champion exists; else ``{"version": v, "metrics": {...}}``
        or ``{"version": v, "error": "why it could not be scored"}``
    :param training_test: apply ``require_significance`` to the training evaluation's paired
        test (``champion["significance"]``); the A/B decision applies its own test instead
    """
    checks: list[Check] = []
    for threshold in config.gate.thresholds:
        observed = challenger.get(threshold.metric, float("nan"))
        ok = not math.isnan(observed) and threshold.holds(observed)
        checks.append(Check(f"threshold {threshold}", ok, f"observed {observed:.4f}"))

    metric = config.comparison_metric
    margin = config.gate.champion_margin
    if champion is None:
        checks.append(Check("champion comparison", True, "no champion yet: this is the first model"))
    elif champion.get("error"):
        checks.append(Check("champion comparison", False,
                            f"champion v{champion['version']} could not be evaluated on the same "
                            f"held-out rows: {champion['error']}"))
    else:
        # On rows the champion never trained on, when the evaluation left some out.
        mine = champion.get("challenger_metrics") or challenger
        new, old = mine.get(metric, float("nan")), champion["metrics"].get(metric, float("nan"))
        delta = (new - old) if HIGHER_IS_BETTER[metric] else (old - new)
        # Tolerance: 0.06 - 0.05 is 0.00999... in floating point, yet clearly meets a 0.01 margin.
        ok = not math.isnan(delta) and delta > 1e-12 and delta >= margin - 1e-9
        checks.append(Check(
            "champion comparison", ok,
            f"{metric} challenger {new:.4f} vs champion v{champion['version']} {old:.4f}"
            + (f" on {champion['rows']} held-out rows outside its training partitions "
               f"({', '.join(champion['excluded_partitions'])} left out)"
               if champion.get("excluded_partitions") else "")
            + f": improvement {delta:+.4f}, required > 0 and >= {margin:g}"))
        if config.gate.require_significance and training_test:
            checks.append(significance_check(config, champion.get("significance")))
    return Decision(all(c.passed for c in checks), checks)


def significance_check(config: DatasetConfig, test: dict[str, Any] | None) -> Check:
    """``require_significance``: the paired test's lower bound must be above the margin."""
    margin = config.gate.champion_margin
    if not test or test.get("error"):
        why = (test or {}).get("error") or "the evaluation ran no paired test"
        return Check("significance", False, f"no paired test of {config.comparison_metric}: {why}")
    low = test["low"]
    ok = not math.isnan(low) and low > margin
    detail = test.get("description") or f"lower bound {low:+.4f}"
    return Check("significance", ok, f"{detail}; promote needs the lower bound above the "
                                     f"margin {margin:g} (require_significance)")


@dataclass(frozen=True)
class ABDecision:
    """``promote`` (every check passed), ``reject`` (a threshold failed or the challenger is
    significantly worse) or ``keep`` (not enough evidence yet: keep both and collect labels)."""

    verdict: str
    decision: Decision
    interval: dict[str, Any] | None

    def log_line(self, model_name: str, challenger_version: str) -> str:
        return (f"A/B decision for {model_name} challenger v{challenger_version}: "
                f"{self.verdict.upper()}: " + "; ".join(self.decision.reasons))


def decide_ab(config: DatasetConfig, *, challenger: dict[str, float], champion: dict[str, Any],
              interval: Any | None, rows: dict[str, int],
              trial_days: int | None = None) -> ABDecision:
    """The training gate (thresholds + champion comparison, :func:`decide`) on each arm's live
    metrics, plus a significance check on the bootstrap interval (:mod:`include.mlops_core.abtest`).

    :param champion: ``{"version", "metrics"}`` of the champion arm
    :param interval: :class:`include.mlops_core.abtest.Interval` of the comparison metric, or None
        when an arm has fewer labelled rows than ``rollout.min_labelled_rows``
    :param rows: labelled rows per arm
    :param trial_days: days since the challenger got its alias; past ``rollout.max_trial_days``
        an undecided trial ends in a rejection
    """
    base = decide(config, challenger, champion, training_test=False)  # its own test below
    checks = list(base.checks)
    need = config.rollout.min_labelled_rows
    limit = config.rollout.max_trial_days
    expired = trial_days is not None and trial_days > limit
    if interval is None:
        checks.append(Check("significance", False,
                            f"not enough labelled rows yet: champion {rows.get('champion', 0)}, "
                            f"challenger {rows.get('challenger', 0)}, need {need} per arm"))
        if expired:
            checks.append(Check("trial length", False, f"{trial_days} days on trial, more than "
                                f"rollout.max_trial_days={limit}"))
            return ABDecision("reject", Decision(False, checks), None)
        return ABDecision("keep", Decision(False, checks), None)
    margin = config.gate.champion_margin
    significant = interval.low > 0 and interval.low >= margin - 1e-9
    checks.append(Check("significance", significant,
                        interval.describe() + f"; promote needs the lower bound > 0 and >= {margin:g}"))
    thresholds_ok = all(c.passed for c in base.checks if c.name.startswith("threshold"))
    if all(c.passed for c in checks):
        verdict = "promote"
    elif not thresholds_ok or interval.significant_worse:
        verdict = "reject"
    else:
        verdict = "keep"
    if verdict == "keep" and expired:
        checks.append(Check("trial length", False, f"{trial_days} days on trial without a "
                            f"significant result, more than rollout.max_trial_days={limit}"))
        verdict = "reject"
    return ABDecision(verdict, Decision(verdict == "promote", checks), interval.as_dict())


def promotion_card(*, config: DatasetConfig, decision: Decision, challenger: dict[str, Any],
                   champion: dict[str, Any] | None, context: dict[str, Any],
                   loosened: list[str] | None = None, lineage: dict[str, Any] | None = None,
                   plots: list[str] | None = None,
                   selection: dict[str, Any] | None = None,
                   explanation: dict[str, Any] | None = None) -> dict[str, Any]:
    """The promotion card as a JSON-serialisable dict (also rendered to HTML). ``loosened``: how
    the run's overrides loosened the dataset's gate (the card says so in red). ``lineage``: what
    the model was trained from (:func:`lineage`); ``plots``: URIs of the evaluation's pictures,
    which the HTML card embeds; ``selection``: the select step's comparison of the candidates
    (every candidate, its metric, its difference to the best with that difference's interval,
    and each tuned candidate's study); ``explanation``: the top features by SHAP and
    permutation importance on the held-out rows (or why there is none)."""
    return {
        "model_name": config.registered_model_name,
        "task": config.task,
        "decision": decision.as_dict(),
        "loosened_gate": list(loosened or []),
        "challenger": challenger,
        "champion": champion,
        "gate_config": json.loads(config.gate.model_dump_json()),
        "lineage": lineage,
        "plots": list(plots or []),
        "selection": selection,
        "explanation": explanation,
        **context,
    }


LINEAGE_FILES = 20  # data files listed on the card; the rest are counted


def lineage(repro: dict[str, Any], *, image: str | None = None) -> dict[str, Any]:
    """The card's lineage from the reproducibility manifest ``train`` wrote: the partitions and
    files the model was trained on, the code, the training params, the packages and where it
    was trained (the trainer image, for a container run)."""
    data = repro.get("data") or {}
    files = [{"key": f.get("key") or f.get("uri"), "size": f.get("size"), "rows": f.get("rows")}
             for f in data.get("files") or []]
    return {
        "partitions": list(data.get("partitions") or []),
        "source_uri": data.get("source_uri"),
        "files": files[:LINEAGE_FILES],
        "files_total": len(files),
        "rows": data.get("row_count"),
        "fingerprint": data.get("fingerprint"),
        "snapshot_uri": data.get("snapshot_uri"),
        "code_version": repro.get("code_version"),
        "source_hash": repro.get("source_hash"),
        "params": (repro.get("params") or {}).get("training"),
        "trained": repro.get("trained"),
        "packages": repro.get("packages"),
        "image": f"trainer image {image}" if image else "in-process (the Airflow worker)",
    }


def ab_card(*, config: DatasetConfig, outcome: ABDecision, live: dict[str, dict[str, float]],
            counts: dict[str, int], champion: str, challenger: str,
            context: dict[str, Any], loosened: list[str] | None = None) -> dict[str, Any]:
    """The promotion card of an A/B decision: same shape as the training card, plus the test."""
    return {
        "model_name": config.registered_model_name,
        "task": config.task,
        "kind": f"A/B ({config.rollout.mode})",
        "verdict": outcome.verdict,
        "decision": outcome.decision.as_dict(),
        "loosened_gate": list(loosened or []),
        "challenger": {"version": challenger, "metrics": live.get("challenger", {}),
                       "labelled_rows": counts.get("challenger", 0)},
        "champion": {"version": champion, "metrics": live.get("champion", {}),
                     "labelled_rows": counts.get("champion", 0)},
        "statistics": outcome.interval,
        "gate_config": json.loads(config.gate.model_dump_json()),
        "rollout_config": json.loads(config.rollout.model_dump_json()),
        **context,
    }


def render_card_html(card: dict[str, Any], images: dict[str, bytes] | None = None) -> str:
    """The card as one self-contained HTML page; ``images`` (name -> PNG bytes) are embedded."""
    import base64

    esc = html.escape
    decision = card["decision"]
    verdict = str(card.get("verdict") or ("approved" if decision["approved"] else "rejected")).upper()
    color = "#1a7f37" if decision["approved"] else "#cf222e"
    rows = "".join(
        f"<tr><td>{'&#10004;' if c['passed'] else '&#10008;'}</td><td>{esc(c['name'])}</td>"
        f"<td>{esc(c['detail'])}</td></tr>" for c in decision["checks"])
    metrics = card["challenger"].get("metrics", {})
    champ = (card.get("champion") or {}).get("metrics", {})
    metric_rows = "".join(
        f"<tr><td>{esc(k)}</td><td>{v:.4f}</td><td>{champ[k]:.4f}</td></tr>" if k in champ else
        f"<tr><td>{esc(k)}</td><td>{v:.4f}</td><td>-</td></tr>" for k, v in metrics.items())
    context = "".join(f"<tr><td>{esc(str(k))}</td><td>{esc(str(v))}</td></tr>"
                      for k, v in card.items()
                      if k not in {"decision", "challenger", "champion", "gate_config",
                                   "loosened_gate", "lineage", "plots", "selection",
                                   "explanation"}
                      and not isinstance(v, dict))
    pictures = "".join(
        f'<figure><img alt="{esc(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(payload).decode()}"><figcaption>{esc(name)}</figcaption></figure>'
        for name, payload in (images or {}).items())
    pictures = f"<h2>Pictures</h2>{pictures}" if pictures else ""
    lineage_html = _lineage_html(card.get("lineage"))
    loosened = card.get("loosened_gate") or []
    warning = (f'<div class="loosened" style="background:#cf222e;color:#fff;padding:8px 12px;'
               f'font-weight:bold">Decided under a LOOSENED gate (the run\'s overrides, allowed '
               f'by the deployment\'s policy): {esc("; ".join(loosened))}</div>'
               if loosened else "")
    # The A/B decision's test, or the training gate's paired test against the champion.
    stats = card.get("statistics") or (card.get("champion") or {}).get("significance") or {}
    summary = stats.get("description") or stats.get("error") or ""
    statistics = ("<h2>Significance test</h2>" + (f"<p>{esc(summary)}</p>" if summary else "")
                  + "<table>" + "".join(
                      f"<tr><td>{esc(str(k))}</td><td>{esc(str(v))}</td></tr>"
                      for k, v in stats.items() if k != "description")
                  + "</table>") if stats else ""
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>Promotion card: {esc(card['model_name'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{border:1px solid #ccc;padding:4px 8px}}
table{{border-collapse:collapse;margin-bottom:1.5em}}</style></head><body>
<h1>{esc(card['model_name'])}: <span style="color:{color}">{verdict}</span></h1>
{warning}
<h2>Checks</h2><table><tr><th></th><th>check</th><th>detail</th></tr>{rows}</table>
<h2>Held-out metrics</h2><table><tr><th>metric</th><th>challenger</th><th>champion</th></tr>
{metric_rows}</table>
{pictures}
{statistics}{_selection_html(card.get("selection"))}{_explanation_html(card.get("explanation"))}<h2>Context</h2><table>{context}</table>
{lineage_html}</body></html>"""


def _explanation_html(explanation: dict[str, Any] | None) -> str:
    """What drives the model: the top input columns by mean |SHAP| and permutation importance."""
    if not explanation:
        return ""
    esc = html.escape
    if explanation.get("error"):
        return f"<h2>Explanation</h2><p>Not available: {esc(explanation['error'])}</p>"
    rows = "".join(
        f"<tr><td>{f['rank']}</td><td>{esc(str(f['column']))}</td><td>{f['shap']:.4g}</td>"
        f"<td>{f['permutation_mean']:.4g} &plusmn; {f['permutation_std']:.2g}</td></tr>"
        for f in explanation.get("top_features") or [])
    return (f"<h2>Explanation</h2><p>SHAP ({esc(str(explanation.get('method')))}) and "
            f"permutation importance on the held-out rows.</p><table><tr><th>rank</th>"
            f"<th>column</th><th>mean |SHAP|</th><th>permutation importance</th></tr>{rows}"
            "</table>")


def _selection_html(selection: dict[str, Any] | None) -> str:
    """The candidates table: each candidate's metric on the same held-out rows, its difference
    to the selected one with that difference's interval, and its tuning study."""
    if not selection or not selection.get("candidates"):
        return ""
    esc = html.escape
    metric = selection.get("metric", "")
    rows = []
    for row in selection["candidates"]:
        value = row.get("value")
        interval = row.get("interval")
        tuning = row.get("tuning") or {}
        study = (f"{(tuning.get('trials') or {}).get('complete', 0)} complete, "
                 f"{(tuning.get('trials') or {}).get('pruned', 0)} pruned; best "
                 f"{json.dumps(tuning.get('best_params'), sort_keys=True)}") if tuning else "-"
        rows.append(
            f"<tr><td>{'&#9733;' if row.get('selected') else ''}</td>"
            f"<td>{esc(str(row.get('candidate')))}</td><td>{esc(str(row.get('family')))}</td>"
            f"<td>{'-' if value is None else f'{value:.4f}'}</td>"
            f"<td>{esc(row['description']) if row.get('description') else '-' if not interval else ''}"
            f"</td><td>{esc(study)}</td></tr>")
    return (f"<h2>Candidates</h2><p>Compared by {esc(metric)} on the same "
            f"{selection.get('test_rows', '')} held-out rows; &#9733; = selected.</p><table><tr>"
            f"<th></th><th>candidate</th><th>family</th><th>{esc(metric)}</th>"
            f"<th>vs the selected (paired test)</th><th>tuning</th></tr>{''.join(rows)}</table>")


def _lineage_html(lineage: dict[str, Any] | None) -> str:
    if not lineage:
        return ""
    esc = html.escape
    files = "".join(f"<tr><td>{esc(str(f['key']))}</td><td>{f.get('size')}</td>"
                    f"<td>{f.get('rows')}</td></tr>" for f in lineage.get("files") or [])
    more = lineage.get("files_total", 0) - len(lineage.get("files") or [])
    if more > 0:
        files += f"<tr><td colspan=3>and {more} more</td></tr>"
    rows = [("partitions", ", ".join(lineage.get("partitions") or []) or "-"),
            ("source", lineage.get("source_uri")), ("rows", lineage.get("rows")),
            ("data fingerprint", lineage.get("fingerprint")),
            ("snapshot", lineage.get("snapshot_uri")), ("code", lineage.get("code_version")),
            ("training code hash", lineage.get("source_hash")),
            ("trained in", lineage.get("image")),
            ("training params", json.dumps(lineage.get("params"), sort_keys=True)),
            ("trained with", json.dumps(lineage.get("trained"), sort_keys=True)),
            ("packages", ", ".join(f"{k} {v}" for k, v in (lineage.get("packages") or {}).items()))]
    table = "".join(f"<tr><td>{esc(k)}</td><td>{esc(str(v))}</td></tr>" for k, v in rows)
    return (f"<h2>Lineage</h2><table>{table}</table><h3>Data files</h3>"
            f"<table><tr><th>file</th><th>bytes</th><th>rows</th></tr>{files}</table>")
