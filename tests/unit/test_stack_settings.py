"""The one-machine stack's Airflow settings (scripts/stack.py local_settings): one log server for
the machine (the triggerer's logs are fetched from the scheduler's, which serves the same
folder), and the number of task workers, which the environment may set."""

from __future__ import annotations

import stack


def test_trigger_logs_are_fetched_from_the_one_log_server():
    settings = stack.local_settings({})
    assert settings["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] == \
        settings["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] == "8793"
    moved = stack.local_settings({"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": "18793"})
    assert moved["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] == "18793"


def test_task_workers_default_to_four_and_the_environment_wins():
    assert stack.local_settings({})["AIRFLOW__CORE__PARALLELISM"] == "4"
    assert stack.local_settings({"AIRFLOW__CORE__PARALLELISM": "2"})[
        "AIRFLOW__CORE__PARALLELISM"] == "2"


def test_the_throwaway_stacks_use_the_same_settings(tmp_path):
    env = stack.airflow_process_env(tmp_path, 8080, {key: "x" for key in
                                                     stack.AIRFLOW_PROCESS_SECRETS},
                                    passwords_file=tmp_path / "p.json", base={})
    assert {key: env[key] for key in stack.local_settings({})} == stack.local_settings({})
