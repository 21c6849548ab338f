"""The record as files: autoresearch's results.tsv and a CSV of every experiment column."""

from __future__ import annotations

import csv
import io

import sqlite_utils

from server.record import OK
from server.store.schema import EXPERIMENT_COLUMNS


def results_tsv(db: sqlite_utils.Database, metric: str) -> str:
    """autoresearch's results.tsv: `commit METRIC memory_gb status description`, tab-separated
    (METRIC: the target's metric name, as autoresearch names its metric's column).

    commit = the experiment's code hash (7 chars) or `baseline`; status keep/discard/crash
    (keep = it improved on the best before it); crashes logged as 0.000000 like autoresearch.
    """
    out = io.StringIO()
    out.write(f"commit\t{metric}\tmemory_gb\tstatus\tdescription\n")
    rows = db.query(
        "SELECT id, kind, code_hash, metric_value, peak_memory_mb, status, verdict, description FROM experiments "
        "WHERE status NOT IN ('queued', 'running') ORDER BY id"
    )
    for row in rows:
        commit = "baseline" if row["kind"] == "baseline" else (row["code_hash"] or "")[:7]
        if row["status"] == OK:
            status = "keep" if row["verdict"] in ("improved", "baseline") else "discard"
            value, memory = row["metric_value"] or 0.0, (row["peak_memory_mb"] or 0.0) / 1024
        else:
            status, value, memory = "crash", 0.0, 0.0
        description = " ".join((row["description"] or "").split())
        out.write(f"{commit}\t{value:.6f}\t{memory:.1f}\t{status}\t{description}\n")
    return out.getvalue()


def experiments_csv(db: sqlite_utils.Database) -> str:
    """Every experiment, every column, in id order."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(EXPERIMENT_COLUMNS))
    writer.writeheader()
    for row in db.query("SELECT * FROM experiments ORDER BY id"):
        writer.writerow(row)
    return out.getvalue()
