"""Third-party warnings that reach every task log and that no user of this project can act on,
each ignored where it is raised and nowhere else (docs/monitoring.md, "Task logs").

- ``pathspec`` >= 1.0 deprecates ``GitWildMatchPattern``, which Airflow's own ``.airflowignore``
  reader still builds (``airflow.sdk._shared.module_loading.file_discovery``, and its copy in
  ``airflow._shared``). Every task reads ``plugins/.airflowignore`` when it loads the plugins,
  so every task log began with this warning. Only this message, only from that module: any
  other deprecation Airflow or pathspec raises still shows.

No import beyond the standard library: Airflow imports this through ``airflow_local_settings``
(plugins/airflow_local_settings.py) in every process it starts, before any plugin or DAG.
"""

from __future__ import annotations

import warnings

# (message prefix, the module the warning is attributed to), both regular expressions.
IGNORED = (
    (r"GitWildMatchPattern \('gitwildmatch'\) is deprecated",
     r"airflow(\.sdk)?\._shared\.module_loading\.file_discovery"),
)


def quiet_third_party_warnings() -> None:
    """Add the filters of :data:`IGNORED` (idempotent: ``warnings`` replaces an equal filter)."""
    for message, module in IGNORED:
        warnings.filterwarnings("ignore", message=message, category=DeprecationWarning,
                                module=module)
