"""Shared fixtures: a prepared data directory (real corpus, real tokenizer) and the anyio backend."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trainer import prepare as prepare_module

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default corpus prepared once per test session (about 3 s): train/, val/, tokenizer/."""
    cached = os.environ.get("AUTORESEARCH_TEST_DATA")
    target = Path(cached) if cached else tmp_path_factory.mktemp("home") / "data"
    prepare_module.prepare(target, quiet=True)
    return target
