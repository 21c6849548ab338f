"""The dashboard pages, the JSON API and the downloads (progress.png, results.tsv)."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import PlainTextResponse

from server.lab import Lab


def register(app: FastAPI, lab: Lab, access: Any) -> None:
    """Add the dashboard's routes to `app`."""

    @app.get("/results.tsv", response_class=PlainTextResponse)
    def results_tsv(agent: str = Depends(access)) -> str:
        return lab.store.export_results_tsv()
