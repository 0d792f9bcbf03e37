"""The Airflow UI in a real browser, as a person uses it: the operator logs in on the login page,
opens the training DAG, triggers it through the Trigger form with changed Params, answers the
promotion approval on the task's Required Action tab, watches the run succeed, and follows the
evaluate task's "MLflow run" extra link to the MLflow run page.

Playwright drives Debian's chromium (./deploy.sh test installs it with apt-get; Playwright's own
browser download is never used). The screenshots go to docs/img/, where the README shows them
(``MLOPS_SCREENSHOT_DIR`` puts them elsewhere).
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from include.mlops_core.demo_data import write_partitions
from tests.integration.conftest import (
    APPROVAL_DATASET,
    DAG_ID,
    REPO,
    RUN_TIMEOUT,
    TASKS,
    champion_of,
    ran_ok,
)

CHROMIUM = os.environ.get("MLOPS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(os.environ.get("MLOPS_SCREENSHOT_DIR") or REPO / "docs" / "img")
VIEWPORT = {"width": 1400, "height": 900}
UI_MS = 20_000  # how long the UI may take to show what the API already says
# This test's own model, source prefix and day (no other test uses June 2025).
MODEL, SOURCE = "it_browser_ui", "s3://mlops-data/it_browser_ui"
PARTITION, LOGICAL_DATE = date(2025, 6, 15), date(2025, 6, 16)


@pytest.fixture
def browser() -> Any:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no chromium at {CHROMIUM}: ./deploy.sh test installs Debian's chromium "
                    "(apt-get install chromium; log: .local/logs/apt-chromium.log), or set "
                    "MLOPS_CHROMIUM to a Chromium binary", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        found = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-background-networking"])
        yield found
        found.close()


def test_operator_triggers_approves_and_follows_the_mlflow_link_in_the_ui(
        services: Any, airflow: Any, browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    write_partitions(services.store(), SOURCE, PARTITION, 1, rows=1000)
    run_id = f"it_browser__{uuid.uuid4().hex[:6]}"
    ui = airflow.api.url
    mlflow = urlsplit(services.mlflow_url)
    # MLflow asks for basic auth: the read-only person's login, sent to MLflow only.
    context = browser.new_context(viewport=VIEWPORT, http_credentials={
        "username": "viewer", "password": services.secrets["MLOPS_MLFLOW_VIEWER_PASSWORD"],
        "origin": f"{mlflow.scheme}://{mlflow.netloc}"})
    page = context.new_page()
    page.set_default_timeout(UI_MS)
    started = time.monotonic()
    try:
        # The login page, then the training DAG from the Dags list.
        page.goto(f"{ui}/")
        page.get_by_label("Username").fill("operator")
        page.get_by_label("Password").fill(services.secrets["MLOPS_AIRFLOW_OPERATOR_PASSWORD"])
        page.get_by_role("button", name="Sign in").click()
        page.get_by_test_id("nav-dags-link").click()
        page.get_by_test_id("dag-id").filter(has_text=re.compile(f"^{DAG_ID}$")).click()
        header(page, DAG_ID)

        trigger_through_the_form(page, run_id)
        run = airflow.api.json("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")
        assert run["logical_date"].startswith(LOGICAL_DATE.isoformat()), run
        assert (run["triggered_by"], run["triggering_user_name"]) == ("ui", "operator"), run
        assert {key: run["conf"][key] for key in ("dataset", "model_name", "source_uri")} == \
            {"dataset": APPROVAL_DATASET, "model_name": MODEL, "source_uri": SOURCE}, run["conf"]

        # The run page: wait until the approve task asks for a person.
        watch(page, row(page, "approve").get_by_test_id("state-badge"), "Awaiting Input", airflow,
              run_id, timeout=RUN_TIMEOUT)
        answer_the_approval(page, airflow, run_id)

        # Back on the run page, the run succeeds.
        page.get_by_role("link", name=run_id, exact=True).first.click()
        watch(page, header(page, run_id).get_by_test_id("state-badge").first, "Success", airflow,
              run_id, timeout=120)
        expect(row(page, "approve").get_by_test_id("state-badge")).to_have_text("Success")
        shot(page, "run-success.png")

        # evaluate → Details → the "MLflow run" extra link, opened in a new tab.
        client = services.mlflow_client()
        (mlflow_run,) = client.search_runs([client.get_experiment_by_name(MODEL).experiment_id],
                                           filter_string=f"tags.`airflow.run_id` = '{run_id}'")
        row(page, "evaluate").get_by_role("link", name="evaluate", exact=True).click()
        header(page, "evaluate")
        page.get_by_role("link", name="Details", exact=True).click()
        link = page.get_by_role("link", name="MLflow run", exact=True)
        expect(link).to_have_attribute("href",
                                       f"{services.mlflow_url}/#/runs/{mlflow_run.info.run_id}")
        with context.expect_page() as opened:
            link.click()
        mlflow_page = opened.value
        mlflow_page.set_default_timeout(UI_MS)
        expect(mlflow_page).to_have_title(re.compile(mlflow_run.info.run_id), timeout=30_000)
        expect(mlflow_page.get_by_text(mlflow_run.info.run_name, exact=True).first).to_be_visible()
        expect(mlflow_page.get_by_text(f"airflow.run_id: {run_id}")).to_be_visible()  # a tag
        expect(mlflow_page.get_by_text("mlops.outcome: promoted")).to_be_visible()
        assistant = mlflow_page.get_by_role("button", name="Close", exact=True)
        if assistant.count() == 1:  # MLflow 3.17 opens its assistant panel beside the run
            assistant.click()
        shot(mlflow_page, "mlflow-run.png")
    except BaseException:
        report_failure(context, airflow, run_id, tmp_path)
        raise
    finally:
        context.close()
    print(f"browser flow took {time.monotonic() - started:.0f} s")

    run = airflow.api.json("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")
    assert run["state"] == "success", airflow.failure_report(run_id)
    states = airflow.states(run_id)
    assert set(states) == TASKS and ran_ok(states), states
    assert f"Approved by operator: promoting {MODEL} v1" in airflow.task_log(run_id, "approve")
    assert champion_of(services.mlflow_client(), MODEL) == "1"


def trigger_through_the_form(page: Any, run_id: str) -> None:
    """The Trigger dialog: logical date, three Params and the run id, then Trigger."""
    from playwright.sync_api import expect

    page.get_by_test_id("trigger-dag-button").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text(f"Trigger Dag - {DAG_ID}")
    dialog.get_by_test_id("datetime-input").click()  # a date picker with typed Date and Time
    day = page.get_by_placeholder("YYYY/MM/DD")
    day.fill(LOGICAL_DATE.strftime("%Y/%m/%d"))
    day.press("Enter")
    clock = page.get_by_placeholder("HH:mm")
    clock.fill("00:00")
    clock.press("Enter")
    page.keyboard.press("Escape")  # closes the picker, not the dialog
    expect(dialog.get_by_test_id("datetime-input")).to_have_text(
        LOGICAL_DATE.strftime("%b %d, %Y 00:00"))
    # One input per Param, with the id element_<param> (the form's labels name no input).
    for param, value in (("dataset", APPROVAL_DATASET), ("source_uri", SOURCE),
                         ("model_name", MODEL)):
        dialog.locator(f"#element_{param}").fill(value)
    # The Params from the top, for the picture (the dialog scrolls).
    dialog.get_by_role("button", name="Run Parameters").evaluate(
        "e => e.scrollIntoView({block: 'start'})")
    shot(page, "trigger-form.png")
    dialog.get_by_role("button", name="Advanced Options").click()
    dialog.get_by_label("Run ID").fill(run_id)
    dialog.get_by_test_id("trigger-dag-submit").click()
    page.wait_for_url(f"**/dags/{DAG_ID}/runs/{run_id}")


def answer_the_approval(page: Any, airflow: Any, run_id: str) -> None:
    """approve → Required Action → Approve, once the scheduler has seen the task defer.

    Airflow 3.3 fails a resumed HITL task ("killed externally") when the answer lands before
    the scheduler has processed the task's switch to awaiting_input; its log says when it has.
    The answer window is the approval dataset's 72 s, so nothing here waits long.
    """
    from playwright.sync_api import expect

    seen = f"TaskInstance Finished: dag_id={DAG_ID}, task_id=approve, run_id={run_id}"
    deadline = time.monotonic() + 30
    while seen not in airflow.logs["scheduler"].read_text(errors="replace"):
        assert time.monotonic() < deadline, f"the scheduler never logged {seen!r}"
        time.sleep(0.5)
    row(page, "approve").get_by_role("link", name="approve", exact=True).click()
    expect(header(page, "approve").get_by_test_id("state-badge").first).to_have_text(
        "Awaiting Input")
    page.get_by_role("link", name=re.compile(r"^Required Action")).click()
    expect(page.get_by_text(f"Promote {MODEL} v1?")).to_be_visible()
    expect(page.get_by_text("PASS threshold roc_auc >= 0.7", exact=False)).to_be_visible()
    shot(page, "approval.png")
    page.get_by_role("button", name="Approve", exact=True).click()
    expect(page.get_by_text(re.compile(r"Response received at .* from operator"))).to_be_visible()


def watch(page: Any, badge: Any, state: str, airflow: Any, run_id: str, timeout: float) -> None:
    """Wait until ``badge`` (a state badge the UI refreshes by itself) reads ``state``; the
    REST API only bounds the wait: a run that ended otherwise fails at once, with its report."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if badge.count() and badge.first.inner_text().strip() == state:
            return
        run = airflow.api.json("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")
        if run["state"] == "failed" or (run["state"] == "success" and state != "Success"):
            pytest.fail(f"{run_id} is {run['state']} while the UI was awaited to show {state}: "
                        f"{airflow.failure_report(run_id)}", pytrace=False)
        page.wait_for_timeout(1000)
    pytest.fail(f"the UI did not show {state} within {timeout:.0f} s; tasks "
                f"{airflow.states(run_id)}", pytrace=False)


def row(page: Any, task: str) -> Any:
    """The run page's Task Instances row of ``task`` (the grid beside it links to the task's
    overview across runs, not to this run's task instance)."""
    return page.get_by_role("row").filter(has=page.get_by_role("link", name=task, exact=True))


def header(page: Any, title: str) -> Any:
    """The page's header card once it is the one titled ``title``: after a click the old page's
    card stays a moment (the UI routes in the browser)."""
    from playwright.sync_api import expect

    card = page.get_by_test_id("header-card")
    expect(card.locator("h2").filter(has_text=re.compile(f"^{re.escape(title)}$"))).to_be_visible()
    return card


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name))


def report_failure(context: Any, airflow: Any, run_id: str, folder: Path) -> None:
    """What a failed run of this test prints: where each open page was (and its picture), the
    run's tasks and failed task logs, and the Airflow processes' log tails."""
    try:
        for index, open_page in enumerate(context.pages):
            picture = folder / f"failure-{index}.png"
            open_page.screenshot(path=str(picture))
            print(f"browser page {open_page.url}: {picture}")
        found = airflow.api.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")
        print(airflow.failure_report(run_id) if found.status_code == 200 else f"no run {run_id}")
        print(airflow.log_tails())
    except Exception as err:  # noqa: BLE001 - the test's own error is the one to raise
        print(f"(the failure report failed too: {type(err).__name__}: {err})")
