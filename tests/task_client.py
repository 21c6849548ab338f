"""A client side of the MCP tasks extension for the tests (mcp 2.3.0's client has none): it
declares `io.modelcontextprotocol/tasks`, and a task answer to tools/call is resolved by
polling tasks/get at the server's pollIntervalMs until the task ends.

`Client(server, mode="auto", extensions=[TasksClient()])` then `call_tool` as usual; or
`client.session.call_tool(..., allow_claimed=True)` for the raw handle, with `get_task` and
`cancel_task` by hand.
"""

from __future__ import annotations

from typing import Any, Literal

import anyio
import mcp_types as types
from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, Request, RequestParams, Result

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"


class TaskIdParams(RequestParams):
    task_id: str


class CreateTaskResult(Result):
    result_type: Literal["task"] = "task"
    task_id: str
    status: str
    status_message: str | None = None
    created_at: str
    last_updated_at: str
    ttl_ms: int | None = None
    poll_interval_ms: int | None = None


class GetTaskResult(Result):
    result_type: Literal["complete"] = "complete"
    task_id: str
    status: str
    status_message: str | None = None
    created_at: str
    last_updated_at: str
    ttl_ms: int | None = None
    poll_interval_ms: int | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class GetTaskRequest(Request[TaskIdParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    params: TaskIdParams
    name_param = "taskId"


class CancelTaskRequest(Request[TaskIdParams, Literal["tasks/cancel"]]):
    method: Literal["tasks/cancel"] = "tasks/cancel"
    params: TaskIdParams
    name_param = "taskId"


class TaskCancelled(RuntimeError):
    """The task ended `cancelled`."""


async def get_task(session: Any, task_id: str) -> GetTaskResult:
    return await session.send_request(
        GetTaskRequest(params=TaskIdParams(task_id=task_id)), GetTaskResult
    )


async def cancel_task(session: Any, task_id: str) -> None:
    await session.send_request(
        CancelTaskRequest(params=TaskIdParams(task_id=task_id)), types.EmptyResult
    )


async def wait_task(session: Any, task_id: str, first_interval_ms: int | None) -> CallToolResult:
    """Poll until the task ends: its CallToolResult, MCPError when it failed, TaskCancelled."""
    interval = (first_interval_ms or 1000) / 1000
    while True:
        got = await get_task(session, task_id)
        if got.status == "completed":
            return CallToolResult.model_validate(got.result or {})
        if got.status == "failed":
            error = got.error or {}
            raise MCPError(
                int(error.get("code", types.INTERNAL_ERROR)),
                str(error.get("message", "task failed")),
                error.get("data"),
            )
        if got.status == "cancelled":
            raise TaskCancelled(task_id)
        interval = (got.poll_interval_ms or interval * 1000) / 1000
        await anyio.sleep(interval)


class TasksClient(ClientExtension):
    """Declares the extension and resolves task answers transparently."""

    identifier = TASKS_EXTENSION

    def claims(self) -> list[ResultClaim[Any]]:
        async def resolve(created: CreateTaskResult, context: ClaimContext) -> CallToolResult:
            return await wait_task(context.session, created.task_id, created.poll_interval_ms)

        return [ResultClaim(result_type="task", model=CreateTaskResult, resolve=resolve)]
