"""The dashboard's routes: the two pages, the static files, the downloads and the JSON API.

`/` is a page a researcher leaves open: the progress chart first (every experiment a dot,
improvements labelled, failures on the top edge, the running best as a step line, the
baseline's noise band, a colour per agent), then the leaderboards, then the queue with live
progress (the page polls `/api/queue` every 2 s and refetches the rest when the record
changes). `/experiments/{id}` shows one experiment: figures, verdict, integrity, the diff,
the log tail, the lineage and the papers. Every route needs the same token as the JSON API
(web.py's `Access`); a `?token=` is then kept in an HttpOnly cookie so that links work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from server import presentation
from server.auth import lookup_token
from server.cache_warmer import Demand
from server.dashboard.chart import render_progress_png
from server.dashboard.data import (
    ChartData,
    ExperimentList,
    QueueState,
    chart_data,
    chart_json,
    experiment_detail,
    experiment_list,
    queue_state,
)
from server.dashboard.pages import (
    STATIC_DIR,
    STATIC_FILES,
    experiment_body,
    index_body,
    page,
    static_version,
)
from server.lab import Lab
from server.models import ExperimentDetail, Leaderboard, NoiseInfo
from server.patch_export import patches_zip
from server.record import ListedKind, Status
from server.timings import Timings, ToolTimings

COOKIE = "autoresearch_token"  # the same name web.py's Access reads
COOKIE_MAX_AGE = 7 * 24 * 3600
MAX_ID = 2**63 - 1  # SQLite's INTEGER range: larger ids would overflow, not miss

# Documented on every route of the schema: what a request without a valid token gets.
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"description": "no valid token: send Authorization: Bearer <token> or ?token=<token>"}
}


def register(
    app: FastAPI,
    lab: Lab,
    access: Callable[[Request], str],
    timings: ToolTimings | None = None,
    chart_readers: Demand | None = None,
) -> None:
    """Add the dashboard's pages, downloads and JSON API to `app`, all behind `access`
    (`/api/timings` where the MCP endpoint's `timings` are kept; each chart request told to
    `chart_readers`, so that the chart is rebuilt ahead while a page shows it)."""
    chart_readers = chart_readers or Demand()
    version = static_version()
    png_cache: dict[str, bytes] = {}
    png_lock = threading.Lock()

    def remember_token(request: Request, response: Response) -> Response:
        """A valid `?token=` is kept in an HttpOnly cookie, so that links and fetches need no token."""
        token = request.query_params.get("token")
        if token and lookup_token(lab.store, token) is not None:
            response.set_cookie(
                COOKIE, token, max_age=COOKIE_MAX_AGE, httponly=True, samesite="lax"
            )
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index(request: Request, viewer: str = Depends(access)) -> Response:
        body = page("autoresearch dashboard", index_body(lab), version, script=True)
        return remember_token(request, HTMLResponse(body))

    @app.get("/experiments/{experiment_id}", response_class=HTMLResponse, include_in_schema=False)
    def experiment_page(
        request: Request,
        experiment_id: Annotated[int, Path(ge=0, le=MAX_ID)],
        viewer: str = Depends(access),
    ) -> Response:
        detail = experiment_detail(lab, experiment_id)
        row = lab.store.get_experiment(experiment_id)
        body = page(
            f"#{detail.id} {detail.description}", experiment_body(lab, detail, row), version
        )
        return remember_token(request, HTMLResponse(body))

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str, viewer: str = Depends(access)) -> Response:
        if name not in STATIC_FILES:
            raise HTTPException(status_code=404, detail=f"no static file {name!r}")
        return Response(
            (STATIC_DIR / name).read_bytes(),
            media_type=STATIC_FILES[name],
            headers={"Cache-Control": "private, max-age=86400"},
        )

    @app.get(
        "/progress.png",
        response_class=Response,
        responses={
            **UNAUTHORIZED,
            200: {"content": {"image/png": {}}, "description": "the progress chart"},
        },
        summary="The progress chart as a PNG, for reports",
    )
    def progress_png(request: Request, viewer: str = Depends(access)) -> Response:
        key = lab.store.record_version() + lab.noise_info()["hardware"]
        with png_lock:
            image = png_cache.get(key)
            if image is None:
                image = render_progress_png(chart_data(lab))
                png_cache.clear()
                png_cache[key] = image
        return remember_token(request, Response(image, media_type="image/png"))

    @app.get(
        "/results.tsv",
        response_class=Response,
        responses={
            **UNAUTHORIZED,
            200: {"content": {"text/tab-separated-values": {}}, "description": "TSV"},
        },
        summary="autoresearch's results.tsv: commit metric_value memory_gb status description",
    )
    def results_tsv(request: Request, viewer: str = Depends(access)) -> Response:
        text = lab.store.export_results_tsv()
        return remember_token(
            request, PlainTextResponse(text, media_type="text/tab-separated-values")
        )

    @app.get(
        "/patches.zip",
        response_class=Response,
        responses={
            **UNAUTHORIZED,
            200: {"content": {"application/zip": {}}, "description": "patches and README.md"},
        },
        summary="Each confirmed improvement on the path to the best as a patch (export --patches)",
    )
    def patches(request: Request, viewer: str = Depends(access)) -> Response:
        data = patches_zip(lab.store, lab.baseline_files)
        headers = {"Content-Disposition": 'attachment; filename="patches.zip"'}
        return remember_token(
            request, Response(data, media_type="application/zip", headers=headers)
        )

    @app.get(
        "/api/chart",
        response_model=ChartData,
        responses=UNAUTHORIZED,
        summary="Everything the progress chart draws",
    )
    def api_chart(viewer: str = Depends(access)) -> Response:
        # Encoded once per change of the record (server.dashboard.data.chart_json), and rebuilt
        # ahead after each change while pages ask for it (server/cache_warmer.py).
        chart_readers.asked()
        return Response(chart_json(lab), media_type="application/json")

    @app.get(
        "/api/experiments",
        response_model=ExperimentList,
        responses=UNAUTHORIZED,
        summary="Experiments, newest first by default, with filters and paging",
    )
    def api_experiments(
        viewer: str = Depends(access),
        agent: Annotated[str | None, Query(max_length=64)] = None,
        status: Status | None = None,
        kind: ListedKind | None = None,
        q: Annotated[
            str | None, Query(max_length=200, description="full-text search: descriptions, diffs")
        ] = None,
        order: Literal["recent", "oldest", "best"] = "recent",
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    ) -> ExperimentList:
        return experiment_list(
            lab,
            agent=agent,
            status=status,
            kind=kind,
            q=q,
            order=order,
            limit=limit,
            offset=offset,
        )

    @app.get(
        "/api/experiments/{experiment_id}",
        response_model=ExperimentDetail,
        responses={**UNAUTHORIZED, 404: {"description": "no experiment with that id"}},
        summary="Everything about one experiment: figures, verdict, flags, diffs, log, lineage",
    )
    def api_experiment(
        experiment_id: Annotated[int, Path(ge=0, le=MAX_ID)], viewer: str = Depends(access)
    ) -> ExperimentDetail:
        return experiment_detail(lab, experiment_id)

    @app.get(
        "/api/leaderboard",
        response_model=Leaderboard,
        responses=UNAUTHORIZED,
        summary="The best experiments, each agent's best, and the measured noise",
    )
    def api_leaderboard(
        viewer: str = Depends(access), limit: Annotated[int, Query(ge=1, le=50)] = 10
    ) -> Leaderboard:
        return presentation.leaderboard(lab, limit)

    @app.get(
        "/api/queue",
        response_model=QueueState,
        responses=UNAUTHORIZED,
        summary="Running experiments with live progress, then the queue in dispatch order",
    )
    def api_queue(viewer: str = Depends(access)) -> QueueState:
        # An open page polls this every 2 s and refetches the chart when the record changes:
        # keep the chart rebuilt ahead for it even when no change came for a while.
        chart_readers.asked()
        return queue_state(lab)

    if timings is not None:

        @app.get(
            "/api/timings",
            response_model=Timings,
            responses=UNAUTHORIZED,
            summary="The server's own response time per MCP tool: p50, p95 and max (server/timings.py)",
        )
        def api_timings(
            viewer: str = Depends(access),
            since: Annotated[
                float | None, Query(ge=0, description="unix time: calls from then on")
            ] = None,
        ) -> Timings:
            return timings.summary(since)

    @app.get(
        "/api/noise",
        response_model=NoiseInfo,
        responses=UNAUTHORIZED,
        summary="The baseline's mean and spread on this hardware: the improvement threshold",
    )
    def api_noise(viewer: str = Depends(access)) -> NoiseInfo:
        return NoiseInfo(**lab.noise_info())
