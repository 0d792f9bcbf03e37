"""ML logic of the pipeline: plain Python, no Airflow import (runs in tasks, tests and containers)."""

__version__ = "0.1.0"
