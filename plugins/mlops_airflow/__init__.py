"""Airflow side of the package: hooks that own connections, thin operators, TaskFlow helpers."""
