"""Long runs as MCP tasks: the `io.modelcontextprotocol/tasks` extension (2026-07-28 revision).

A client that declares the extension on a `tools/call` of run_experiment, confirm_experiment,
promote or combine gets a task handle at once instead of a result; `tasks/get` reports the
task's status, which follows the experiment (working while it is queued, running or a
candidate being confirmed; then completed with the tool's usual result, failed with the
failure reason and the result as the error's data, or cancelled), and `tasks/cancel` cancels
its runs. Clients that do not declare it (Claude Code today, every client of the 2025 era,
which cannot carry a task result) keep the handle + wait_experiment behaviour, unchanged.

mcp 2.3.0 has no tasks implementation, only the seams this module uses: an `Extension` with
its own methods (tasks/*) and a tools/call interceptor. A tool that decides to answer with a
task raises `TaskCreated` (an MCPError, so MCPServer passes it through without validating it
against the tool's output schema); the interceptor turns it into the task handle.

Nothing runs in the background for a task: its state is read from the record on every
tasks/get (a row in `tasks` names the experiments it follows), so a task survives a server
restart as its experiments do. A task belongs to the agent that created it: another agent's
task id is "not found", like an unknown one.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
import mcp_types as types
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.extension import Extension, MethodBinding
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.server import require_client_extension
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, CallToolRequestParams, CallToolResult, RequestParams
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

from server.store.tasks import TaskRow, TaskStore
from server.untrusted import reading_as

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
TaskStatus = Literal["working", "completed", "failed", "cancelled"]
TASK_TTL_MS = 7 * 24 * 3600 * 1000  # a week: a long campaign's task ids stay readable
# A failed experiment is a result, not a protocol failure: this code marks the task's error.
EXPERIMENT_FAILED = -32050


@dataclass(frozen=True)
class TaskView:
    """What a task is now, as its tracker reads it from the record."""

    status: TaskStatus
    message: str | None = None
    # The tool's usual structured output (as MCPServer would send it: a model's JSON, a list
    # wrapped as {"result": [...]}), once completed; a failed task carries it as error data.
    structured: dict[str, Any] | None = None


# How each tool's tasks are followed and cancelled: (row) -> view, and (row, agent) -> None.
Tracker = Callable[[TaskRow], TaskView]
Canceller = Callable[[TaskRow, str], None]


class TaskCreated(MCPError):
    """Raised by a tool that answers with a task: the interceptor sends the handle."""

    def __init__(self, wire: dict[str, Any]) -> None:
        super().__init__(
            types.INTERNAL_ERROR, "a task was created but the tasks extension is not installed"
        )
        self.wire = wire


class TaskIdParams(RequestParams):
    task_id: str  # taskId on the wire


class UpdateTaskParams(RequestParams):
    task_id: str
    input_responses: dict[str, Any] | None = None


def client_declared_tasks(ctx: Context[Any] | ServerRequestContext[Any, Any]) -> bool:
    """This request's client declared the extension, on a protocol revision that can carry a task."""
    rc = ctx.request_context if isinstance(ctx, Context) else ctx
    if rc.protocol_version not in MODERN_PROTOCOL_VERSIONS:
        return False
    caps = rc.session.client_capabilities
    return bool(caps and caps.extensions and TASKS_EXTENSION in caps.extensions)


def tool_result(structured: dict[str, Any]) -> dict[str, Any]:
    """A tool's structured output as the CallToolResult MCPServer would have sent (JSON text too)."""
    result = CallToolResult(
        content=[types.TextContent(type="text", text=json.dumps(structured, indent=2))],
        structured_content=structured,
    )
    dumped = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    dumped.pop("resultType", None)
    return dumped


def structured(output: BaseModel | list[BaseModel] | dict[str, Any]) -> dict[str, Any]:
    """A tool's return value as its structured content: a model's JSON, a dict as it is, a list
    wrapped as {"result": [...]} (MCPServer's rule for non-object outputs)."""
    if isinstance(output, BaseModel):
        return output.model_dump(mode="json", by_alias=True)
    if isinstance(output, list):
        return {"result": [item.model_dump(mode="json", by_alias=True) for item in output]}
    return json.loads(json.dumps(output, default=str))


def _iso(text: str) -> str:
    return text if text.endswith("Z") else text.replace("+00:00", "") + "Z"


class ExperimentTasks(Extension):
    """The extension: tasks/get, tasks/update, tasks/cancel and the tools/call interceptor."""

    identifier = TASKS_EXTENSION

    def __init__(self, store: TaskStore, agent: Callable[[], str]) -> None:
        self.store = store
        self.agent = agent
        self.trackers: dict[str, tuple[Tracker, Canceller]] = {}

    def follow(self, tool: str, tracker: Tracker, canceller: Canceller) -> None:
        """How the tasks of `tool` are read and cancelled."""
        self.trackers[tool] = (tracker, canceller)

    def create(
        self, tool: str, agent: str, experiment_ids: list[int], poll_seconds: float, **subject: Any
    ) -> TaskCreated:
        """Record a task of `agent` following `experiment_ids` (durable before the handle goes
        out) and return the exception the tool raises to answer with it."""
        task_id = secrets.token_urlsafe(24)
        row = self.store.create(
            task_id=task_id,
            agent=agent,
            tool=tool,
            experiment_ids=experiment_ids,
            subject=subject,
            ttl_ms=TASK_TTL_MS,
            poll_interval_ms=int(poll_seconds * 1000),
        )
        return TaskCreated(self._wire(row, TaskView("working", "queued")))

    # ------------------------------------------------------------ protocol

    def methods(self) -> list[MethodBinding]:
        modern = frozenset(MODERN_PROTOCOL_VERSIONS)
        return [
            MethodBinding("tasks/get", TaskIdParams, self._get, protocol_versions=modern),
            MethodBinding("tasks/update", UpdateTaskParams, self._update, protocol_versions=modern),
            MethodBinding("tasks/cancel", TaskIdParams, self._cancel, protocol_versions=modern),
        ]

    async def intercept_tool_call(
        self,
        params: CallToolRequestParams,
        ctx: ServerRequestContext[Any, Any],
        call_next: CallNext,
    ) -> HandlerResult:
        self._set_reader()
        try:
            return await call_next(ctx)
        except TaskCreated as created:
            return {"resultType": "task", **created.wire}

    async def _get(
        self, ctx: ServerRequestContext[Any, Any], params: TaskIdParams
    ) -> dict[str, Any]:
        require_client_extension(ctx, TASKS_EXTENSION)
        row = self._own(params.task_id)
        view = await anyio.to_thread.run_sync(lambda: self.trackers[row.tool][0](row))
        return {"resultType": "complete", **self._wire(row, view)}

    async def _update(
        self, ctx: ServerRequestContext[Any, Any], params: UpdateTaskParams
    ) -> dict[str, Any]:
        require_client_extension(ctx, TASKS_EXTENSION)
        self._own(params.task_id)  # these tasks never ask for input
        return {"resultType": "complete"}

    async def _cancel(
        self, ctx: ServerRequestContext[Any, Any], params: TaskIdParams
    ) -> dict[str, Any]:
        require_client_extension(ctx, TASKS_EXTENSION)
        row = self._own(params.task_id)
        name = self.agent()
        await anyio.to_thread.run_sync(lambda: self.trackers[row.tool][1](row, name))
        return {"resultType": "complete"}

    def _set_reader(self) -> None:
        """Who reads this request's answer: other agents' text in it comes as untrusted blocks
        (server/untrusted.py). Every request runs in a context of its own, so each handler sets
        it (for a tool call, the context follows the call into its worker thread)."""
        try:
            reading_as(self.agent())
        except Exception:  # not authenticated: the call itself is refused
            reading_as(None)

    def _own(self, task_id: str) -> TaskRow:
        """The caller's live task, or the spec's invalid-params error (also for another agent's);
        every tasks/* handler starts here, so it also names the reader."""
        self._set_reader()
        row = self.store.get(task_id[:200]) if isinstance(task_id, str) else None
        if (
            row is None
            or row.agent != self.agent()
            or row.expired()
            or row.tool not in self.trackers
        ):
            raise MCPError(
                INVALID_PARAMS, "Task not found: use the taskId a tools/call returned to you"
            )
        return row

    def _wire(self, row: TaskRow, view: TaskView) -> dict[str, Any]:
        out: dict[str, Any] = {
            "taskId": row.task_id,
            "status": view.status,
            "createdAt": _iso(row.created_at),
            "lastUpdatedAt": _iso(datetime.now(UTC).isoformat(timespec="seconds")),
            "ttlMs": row.ttl_ms,
            "pollIntervalMs": row.poll_interval_ms,
        }
        if view.message:
            out["statusMessage"] = view.message
        if view.status == "completed" and view.structured is not None:
            out["result"] = tool_result(view.structured)
        if view.status == "failed":
            out["error"] = {
                "code": EXPERIMENT_FAILED,
                "message": view.message or "the experiment failed",
                "data": view.structured,
            }
        return out


def poll_interval(budget_seconds: float) -> float:
    """A polling hint that fits the budget: about 20 polls per run, from 1 s to 30 s apart."""
    return min(30.0, max(1.0, budget_seconds / 20))
