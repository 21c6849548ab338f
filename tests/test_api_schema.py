"""The JSON API against its own OpenAPI schema: schemathesis generates requests for every operation.

The server is the real app (build_app under uvicorn on a loopback port) over a lab holding
synthetic rows. With a valid token no generated request may get a 500 and every response must
match the schema; without a token every operation answers 401.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.schemas import OpenApiSchema
from support import free_port, serve_app

from server.auth import issue_token
from server.lab import Lab, LabSettings
from server.web import build_app

pytestmark = pytest.mark.e2e

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)


def add_rows(lab: Lab) -> None:
    """A few finished experiments of every status, with diffs, flags and papers."""
    statuses = ["ok", "ok", "crash", "ok", "timeout", "integrity_fail", "ok", "cancelled"]
    parent = None
    for n, status in enumerate(statuses):
        experiment_id = lab.store.create_experiment(
            agent=("alice", "bob")[n % 2],
            kind="baseline" if n == 0 else "experiment",
            parent_id=parent,
            status=status,
            description=f"idea {n}: <b>markup</b> & 'quotes'",
            code_hash=f"hash{n}",
            diff_parent="--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-a\n+b\n",
            flags=[{"name": "seed_only", "reason": "only the seed", "lines": []}] if n == 3 else [],
            paper_ids=["2401.01234"] if n == 1 else [],
            budget_seconds=lab.budget_seconds,
            hardware=lab.hardware,
            seed=1337,
        )
        lab.store.update_experiment(
            experiment_id,
            metric_value=3.75 - 0.01 * n if status == "ok" else None,
            verdict="improved" if status == "ok" else "failed",
            metrics={"verdict_note": "synthetic"},
            log_tail="line 1\nline 2",
            finished_at="2026-01-01T00:00:00.000Z",
        )
        parent = experiment_id
    lab.store.create_experiment(agent="bob", status="queued", description="waiting its turn")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("schema-home")
    shutil.copytree(data_dir, home / "data")
    lab = Lab(LabSettings(home=home, budget_seconds=4, start_scheduler=False))
    add_rows(lab)
    token = issue_token(lab.store, "reader", role="viewer")
    port = free_port()
    try:
        with serve_app(build_app(lab, host="127.0.0.1", port=port), port, lifespan="auto") as url:
            yield {"url": url, "token": token}
    finally:
        lab.close()


@pytest.fixture(scope="module")
def api_schema(live: dict[str, Any]) -> OpenApiSchema:
    return schemathesis.openapi.from_url(f"{live['url']}/openapi.json")


def operations(api_schema: OpenApiSchema) -> list[Any]:
    """Every operation in the schema (a schema that fails to load an operation fails the test)."""
    return [result.ok() for result in api_schema.get_all_operations()]


def test_schema_covers_the_whole_api(api_schema: OpenApiSchema) -> None:
    paths = set(api_schema.raw_schema["paths"])
    assert {
        "/api/experiments",
        "/api/experiments/{experiment_id}",
        "/api/leaderboard",
        "/api/queue",
        "/api/noise",
        "/api/chart",
        "/progress.png",
        "/results.tsv",
    } <= paths
    assert "/mcp" not in paths  # MCP has its own protocol and auth


CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
]


def test_no_server_errors_with_a_token(api_schema: OpenApiSchema, live: dict[str, Any]) -> None:
    headers = {"Authorization": f"Bearer {live['token']}"}
    for operation in operations(api_schema):

        @given(case=operation.as_strategy())
        @SETTINGS
        def no_500(case: Any) -> None:
            response = case.call(base_url=live["url"], headers=headers)
            assert response.status_code < 500, (case.path, case.query, response.text)
            case.validate_response(response, checks=CHECKS)

        no_500()


def test_every_operation_is_401_without_a_token(
    api_schema: OpenApiSchema, live: dict[str, Any]
) -> None:
    for operation in operations(api_schema):

        @given(case=operation.as_strategy())
        @settings(SETTINGS, max_examples=8)
        def refused(case: Any) -> None:
            response = case.call(base_url=live["url"])
            assert response.status_code == 401, (case.path, case.query, response.status_code)
            assert response.headers.get("www-authenticate") == ["Bearer"]
            case.validate_response(response, checks=CHECKS[1:])

        refused()
