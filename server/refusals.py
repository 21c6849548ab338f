"""What the lab refuses and how it says so: `LabError` (an actionable message for the agent,
a ToolError over MCP and a 4xx over HTTP) and the checks of what agents send (names, ids,
descriptions, ideas, paper ids)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from server.arxiv_ids import parse_arxiv_id
from server.record import FINAL_STATUSES, OK, RESERVED_AGENT_NAMES, SERVER_AGENT, is_server_run
from server.store import MAX_ROW_ID

AGENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_DESCRIPTION = 500
MAX_CLAIM = 300


class LabError(ValueError):
    """A refusal with an actionable message for the agent (becomes a ToolError / HTTP 4xx)."""


def check_experiment_id(value: Any, what: str = "experiment id") -> int:
    """A well-formed row id (1 to MAX_ROW_ID) or a LabError that says what to send."""
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,12}", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ROW_ID:
        shown = (
            repr(value)
            if not isinstance(value, str) or len(value) <= 40
            else repr(value[:40]) + "..."
        )
        raise LabError(
            f"{what} {shown} is not valid; send a whole number from 1 to {MAX_ROW_ID} "
            "(get_history lists experiment ids)"
        )
    return value


def check_agent_name(agent: str) -> str:
    """A valid agent name that is not the server's own, or a LabError."""
    if not isinstance(agent, str) or not AGENT_NAME.fullmatch(agent):
        raise LabError(
            f"agent name {agent!r} is invalid; use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    # The server's name: its runs would pass as the server's own, charged to nobody, and its
    # words would reach every agent as the server's (plain, outside any untrusted block).
    # `unrecorded` labels code of unknown authors (server.record.code_authors).
    if agent in RESERVED_AGENT_NAMES:
        raise LabError(
            f"agent name {agent!r} is reserved for the server's own runs; connect under another name"
        )
    return agent


def check_description(description: str | None) -> str:
    """An experiment's one-line description, whitespace collapsed, or a LabError."""
    description = " ".join((description or "").split())
    if not description:
        raise LabError(
            "description is empty; say in one line what this experiment changes and why, e.g. 'warmdown 0.5 -> 0.7: longer decay helps at short budgets'"
        )
    if len(description) > MAX_DESCRIPTION:
        raise LabError(
            f"description is {len(description)} characters; use at most {MAX_DESCRIPTION} (one line: the change and the hypothesis)"
        )
    return description


def check_claim_text(text: str | None) -> str:
    """A claimed idea's text, whitespace collapsed, or a LabError."""
    text = " ".join((text or "").split())
    if not text:
        raise LabError(
            "the idea is empty; describe in one line what you are about to try, e.g. 'RoPE base 10k -> 50k'"
        )
    if len(text) > MAX_CLAIM:
        raise LabError(f"the idea is {len(text)} characters; use at most {MAX_CLAIM}")
    return text


def check_arxiv_id(value: str) -> str:
    """An arXiv id without its version (the one rule of server/arxiv_ids.py), or a LabError."""
    try:
        return parse_arxiv_id(value or "")
    except ValueError:
        shown = (value or "").strip()
        if shown.lower().startswith("arxiv:"):
            shown = shown[6:]
        raise LabError(
            f"paper id {shown!r} is not an arXiv id; send ids like '2401.01234' (from search_papers)"
        ) from None


def check_checkout_request(experiment_id: int | None, ref: str | None) -> None:
    """Exactly one of an experiment id or a known ref ('baseline' or 'best'), or a LabError."""
    if (experiment_id is None) == (ref is None):
        raise LabError(
            "send exactly one of experiment_id (a number from get_history) or ref ('baseline' or 'best')"
        )
    if ref is not None and ref not in ("baseline", "best"):
        raise LabError(f"ref {ref!r} is unknown; use 'baseline' or 'best', or pass experiment_id")


def check_cancellable(agent: str | None, experiment: Mapping[str, Any]) -> None:
    """An agent may cancel only the live runs it asked for (`requested_by`), never a baseline the
    server shares between agents; `agent` None is the operator: any live run."""
    experiment_id = experiment["id"]
    requester = experiment.get("requested_by") or (
        None if experiment["agent"] == SERVER_AGENT else experiment["agent"]
    )
    if agent is not None:
        if experiment["kind"] == "baseline":
            raise LabError(
                f"experiment #{experiment_id} is a baseline measurement the server shares between agents; "
                "it cannot be cancelled by an agent"
            )
        if is_server_run(experiment):
            raise LabError(
                f"experiment #{experiment_id} is one of the server's own fresh-seed runs that decide "
                "a verdict; it cannot be cancelled by an agent"
            )
        if requester != agent:
            raise LabError(
                f"experiment #{experiment_id} belongs to {requester or 'the server'}; you can cancel only your own"
            )
    if experiment["status"] in FINAL_STATUSES:
        raise LabError(
            f"experiment #{experiment_id} already finished ({experiment['status']}); nothing to cancel"
        )


def check_confirm_repeats(repeats: Any) -> int:
    """A number of confirmation runs from 1 to 10, or a LabError."""
    if not isinstance(repeats, int) or not 1 <= repeats <= 10:
        raise LabError(f"repeats={repeats} is out of range; use 1 to 10")
    return repeats


def check_confirmable(original: Mapping[str, Any]) -> None:
    """Only a successful agent experiment can be confirmed (not a baseline, confirmation, ...)."""
    experiment_id = original["id"]
    if original["status"] != OK:
        raise LabError(
            f"experiment #{experiment_id} is {original['status']}; only a successful run can be confirmed"
        )
    if original["kind"] != "experiment":
        raise LabError(
            f"experiment #{experiment_id} is a {original['kind']} run; confirm the experiment itself"
        )
