"""include/mlops_core/modeling.py skops_io: skops's import-time module scan does not flood an Airflow
process's log with Airflow's deprecation warnings, and real warnings still show."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import sys, warnings
    sys.path[:0] = [{repo!r}]
    import airflow.sdk, airflow.utils.timezone  # what a task process has loaded
    warnings.simplefilter("default")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        {how}
        warnings.warn("a real warning", UserWarning)
    print(len(seen), sum("deprecated" in str(w.message) for w in seen),
          sum(str(w.message) == "a real warning" for w in seen))
""")


def run(how: str) -> tuple[int, int, int]:
    result = subprocess.run([sys.executable, "-c", SCRIPT.format(repo=str(REPO), how=how)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    total, deprecated, real = map(int, result.stdout.split()[-3:])
    return total, deprecated, real


def test_plain_import_of_skops_floods_with_airflow_deprecations() -> None:
    """The problem, shown: without the helper the scan warns once per deprecated attribute."""
    _, deprecated, _ = run("import skops.io")
    assert deprecated > 100


def test_skops_io_imports_quietly_and_keeps_real_warnings() -> None:
    total, deprecated, real = run(
        "from include.mlops_core.modeling import skops_io; skops_io()")
    assert deprecated == 0
    assert real == 1 and total == 1
