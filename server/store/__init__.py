"""The history store: one SQLite file (WAL) through sqlite-utils, shared by every agent.

This package is the only place in the server that speaks SQL. `Store` holds the research
record (experiments with full-text search, agents, tokens, claims, noise baselines);
`store.promotions` the promotion ladder's table and `store.papers` the arXiv cache. Tables
are named for a reader: open the file with any SQLite tool (datasette works) and
`experiments` is the whole research record.

- database: connections (WAL, busy timeout, one per thread) and `write_transaction`
- schema: the tables, their columns and the migrations of old files
- experiments: `Store`, every read and write of the record; listing: its pages, counts and
  the chart's rows; counts: its aggregate queries; rows: how JSON columns are stored
- promotions, papers: the ladder's table and the paper cache; exports: results.tsv and CSV
- sealed: figures no agent reads per experiment (full-precision metric_value, holdout scores)

Nothing in this package deletes an experiment: history is append-and-update only.
"""

from server.record import (
    CANCELLED,
    CRASH,
    FINAL_STATUSES,
    INTEGRITY_FAIL,
    INTERRUPTED,
    LIVE_STATUSES,
    OK,
    QUEUED,
    RUNNING,
    SERVER_AGENT,
    TIMEOUT,
)
from server.store.database import (
    BUSY_TIMEOUT_MS,
    ThreadLocalDatabase,
    open_database,
    utc_now,
    write_transaction,
)
from server.store.experiments import ExperimentNotFound, Store
from server.store.papers import PaperStore
from server.store.promotions import PromotionStore
from server.store.schema import EXPERIMENT_COLUMNS, MAX_ROW_ID, READ_INDEXES, SCHEMA_VERSION
from server.store.sealed import SealedStore

__all__ = [
    "BUSY_TIMEOUT_MS",
    "CANCELLED",
    "CRASH",
    "EXPERIMENT_COLUMNS",
    "FINAL_STATUSES",
    "INTEGRITY_FAIL",
    "INTERRUPTED",
    "LIVE_STATUSES",
    "MAX_ROW_ID",
    "OK",
    "QUEUED",
    "READ_INDEXES",
    "RUNNING",
    "SCHEMA_VERSION",
    "SERVER_AGENT",
    "TIMEOUT",
    "ExperimentNotFound",
    "PaperStore",
    "PromotionStore",
    "SealedStore",
    "Store",
    "ThreadLocalDatabase",
    "open_database",
    "utc_now",
    "write_transaction",
]
