"""The Assets that chain the DAGs: scoring feeds drift monitoring, drift and performance alerts
feed retraining. Each event's ``extra`` names the dataset, model and partition it is about."""

from airflow.sdk import Asset

# batch_scoring → drift_monitor. extra: dataset, model_name, partition_date, partition_uri,
# model_version, challenger_version, rows, scoring_run_id
PREDICTIONS = Asset(name="predictions", uri="mlops://predictions")
# drift_monitor → training. extra: dataset, model_name, partition_date, columns, share,
# report_uri, model_version
DRIFT_DETECTED = Asset(name="drift_detected", uri="mlops://drift_detected")
# performance_monitor → training. extra: dataset, model_name, partition_date, metrics, floor
PERFORMANCE_DEGRADED = Asset(name="performance_degraded", uri="mlops://performance_degraded")
