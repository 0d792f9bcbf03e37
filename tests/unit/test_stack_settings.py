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


def test_free_ports_are_outside_the_ephemeral_range_and_never_handed_out_twice() -> None:
    """Outgoing connections take ports from the kernel's ephemeral range at any moment, so a
    port picked there can be gone before the server binds it; and two picks made before either
    server starts must not overlap."""
    low = stack._ephemeral_low()
    ranges = []
    for _ in range(30):
        port = stack.free_port(7)
        assert port + 6 + 10000 < low
        ranges.append(set(range(port, port + 7)) | set(range(port + 10000, port + 10007)))
    singles = [stack.free_port() for _ in range(30)]
    taken = [p for r in ranges for p in r] + singles
    assert len(taken) == len(set(taken))
    assert all(p < low for p in singles)
