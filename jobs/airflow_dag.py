"""Airflow DAG: nightly scoring through the CLI (BashOperator) and the Python API.

The CLI's exit codes are the contract: 0 done, 1 failed (one ``error:`` line in
the task log), 2 usage error. Airflow fails the task on any non-zero code.
This file is an example to copy; batchserve does not depend on Airflow.
"""

from __future__ import annotations

import datetime as dt

from airflow import DAG  # type: ignore[import-not-found]
from airflow.operators.bash import BashOperator  # type: ignore[import-not-found]
from airflow.operators.python import PythonOperator  # type: ignore[import-not-found]


def _score_with_python_api(ds: str, **_: object) -> int:
    import batchserve

    result = batchserve.score(
        model="s3://lake/models/card-fraud",
        input=f"s3://lake/transactions/date={ds}/",
        output=f"s3://lake/scored/date={ds}/",
        overwrite=True,
    )
    return result.manifest.totals.rows


with DAG(
    dag_id="batchserve_nightly",
    start_date=dt.datetime(2026, 11, 1),
    schedule="0 3 * * *",
    catchup=False,
    default_args={"retries": 1, "retry_delay": dt.timedelta(minutes=10)},
) as dag:
    score_cli = BashOperator(
        task_id="score_cli",
        bash_command=(
            "batchserve score --model s3://lake/models/card-fraud "
            "--input s3://lake/transactions/date={{ ds }}/ "
            "--output s3://lake/scored/date={{ ds }}/ --overwrite"
        ),
        execution_timeout=dt.timedelta(hours=2),
    )
    score_api = PythonOperator(task_id="score_api", python_callable=_score_with_python_api)
