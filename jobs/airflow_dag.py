"""Airflow 3 DAG: score yesterday's partition every night through the batchserve CLI.

Copy this file into your DAGs folder and set the params (or override them per run with
``airflow dags trigger --conf``). batchserve does not depend on Airflow; ``make test-airflow`` runs
this DAG in a real Airflow 3 (``airflow dags test``, SQLite) against the sample data.

Exit codes are the contract (see ``batchserve score --help``):

* 0: scored and committed, ``publish`` runs.
* 3: drift past the threshold (``--fail-on-drift``). The scored data is committed (``_SUCCESS``
  is there) and a retry would only score the same rows again, so ``score`` ends **skipped**
  (``skip_on_exit_code=3``) rather than failed: no retries, no "infrastructure failed" page.
  ``publish`` is skipped with it (its trigger rule needs success), so drifted scores are not handed
  on automatically, and ``drift_alert`` (trigger rule ``all_skipped``) runs instead: it puts the
  drift summary in its log, writes the HTML report to ``report_root`` (outside the dataset, so
  pyarrow and polars still read ``output_root`` as one dataset), and then **fails**: a drifted
  night (features past the policy, or any prediction column, as a model promoted by mistake
  shows) turns the DAG run red instead of ending green with a skip nobody looks at. Clear the
  alert task once a person has decided. A branch operator could do the same, but it would need
  the exit code passed through XCom; the skip is Airflow's own outcome for "ran, and nothing
  downstream should".
* 1, 130, 143: failed or interrupted; Airflow retries, and every attempt runs with ``--resume``,
  so a retry keeps the files an earlier attempt committed and scores only the rest.
* 2: a usage error (bad command line or job file); retries fail the same way.

One task writes one output: ``score`` alone writes ``<output_root>/date=<ds>``; the other tasks
only read it (two writers would hit batchserve's output lock and one would fail).
"""

from __future__ import annotations

import datetime as dt

from airflow.providers.standard.operators.bash import BashOperator  # type: ignore[import-not-found]
from airflow.sdk import DAG, Param, TriggerRule  # type: ignore[import-not-found]

#: The day's output, as every task sees it (relative paths resolve in ``workdir``).
OUTPUT = "{{ params.output_root }}/date={{ ds }}"

with DAG(
    dag_id="batchserve_nightly",
    description="Score yesterday's partition with the production model; drift is its own outcome.",
    start_date=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
    schedule="0 3 * * *",
    catchup=False,
    max_active_runs=1,
    params={
        "workdir": Param("/srv/batchserve", type="string",
                         description="Where jobs/ lives; relative paths resolve here."),
        "batchserve": Param("/srv/batchserve/.venv/bin/batchserve", type="string",
                            description="The batchserve command."),
        "job": Param("jobs/nightly.toml", type="string",
                     description="The job file (its ${ds} is filled from the run's ds)."),
        "output_root": Param("out/nightly", type="string", description="Outputs go to <output_root>/date=<ds>."),
        "report_root": Param("out/reports", type="string",
                             description="Drift reports go here, outside the dataset readers scan."),
    },
    default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=10)},
    tags=["batchserve"],
) as dag:
    score = BashOperator(
        task_id="score",
        bash_command=(
            'cd "{{ params.workdir }}" && exec "{{ params.batchserve }}" score --job "{{ params.job }}" '
            f'--var ds={{{{ ds }}}} --output "{OUTPUT}" --resume --fail-on-drift --log-format json'
        ),
        skip_on_exit_code=3,
        execution_timeout=dt.timedelta(hours=2),
    )
    publish = BashOperator(
        task_id="publish",
        # Stand-in for handing the day's scores on (register a table, notify consumers): here it
        # prints the run's line from its manifest. Runs only after a clean score.
        bash_command=f'cd "{{{{ params.workdir }}}}" && "{{{{ params.batchserve }}}}" runs "{OUTPUT}"',
        retries=0,
    )
    drift_alert = BashOperator(
        task_id="drift_alert",
        # Runs when score was skipped (exit 3): the drift summary lands in this task's log, the HTML
        # report in report_root, and the task fails so the night shows red (wire on_failure_callback
        # or an email here).
        bash_command=(
            f'cd "{{{{ params.workdir }}}}" && mkdir -p "{{{{ params.report_root }}}}" && '
            f'"{{{{ params.batchserve }}}}" report "{OUTPUT}" '
            '--output "{{ params.report_root }}/drift-report-{{ ds }}.html" && '
            'echo "drift past the policy on {{ ds }}: outputs committed, not published; see the report" >&2 && exit 1'
        ),
        trigger_rule=TriggerRule.ALL_SKIPPED,
        retries=0,
    )
    score >> [publish, drift_alert]
