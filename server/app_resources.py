"""The MCP resources and the prompt: program.md, the leaderboard, a workspace file, one
experiment's record, the patches index, and research_loop. Like the tools, each is a few lines
over a Lab call; other agents' text in them comes as untrusted blocks (server/untrusted.py)."""

import json
from collections.abc import Callable

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from server import authorship
from server import presentation as views
from server.lab import Lab, check_experiment_id
from server.patch_export import patches_index
from server.presentation import DEFAULT_STOPPING, default_goal
from server.record import code_authors
from server.store import MAX_ROW_ID
from server.tool_support import AgentName, resource_refusals
from server.untrusted import agent_text, reading_as

# Fields of an experiment row its agent wrote, and fields its code wrote or produced (whose
# authors are every agent who wrote part of the code: server.record.code_authors): untrusted
# blocks for any other agent.
AGENT_WRITTEN = ("description", "force_reason")
CODE_WRITTEN = (
    "diff_parent",
    "diff_baseline",
    "log_tail",
    "failure_reason",  # may quote names from the author's rejected model
)


def register_resources(
    mcp: MCPServer, lab: Lab, agent: AgentName, reader_or_none: Callable[[], str | None]
) -> None:
    """Add the resources and the research_loop prompt to `mcp`."""

    @mcp.resource(
        "autoresearch://program.md",
        name="program",
        mime_type="text/markdown",
        description="The researcher's instructions with this server's budget and rules filled in",
    )
    def program_resource() -> str:
        return views.program_text(lab)

    @mcp.resource(
        "autoresearch://leaderboard",
        name="leaderboard",
        mime_type="application/json",
        description="The current leaderboard and the measured noise",
    )
    def leaderboard_resource() -> str:
        reading_as(reader_or_none())
        return json.dumps(
            {
                "entries": [e.model_dump() for e in views.leaderboard_entries(lab, 20, "S")],
                "per_agent": lab.per_agent(),
                "noise": lab.noise_info(),
            }
        )

    @mcp.resource(
        "autoresearch://patches",
        name="patches",
        mime_type="text/markdown",
        description="Each confirmed improvement on the path to the best as a reviewable patch: the "
        "index (export --patches writes the files, the dashboard serves /patches.zip)",
    )
    def patches_resource() -> str:
        reading_as(reader_or_none())
        return patches_index(lab.store, lab.baseline_files)

    @mcp.resource(
        "autoresearch://workspace/{name}",
        name="workspace-file",
        mime_type="text/plain",
        description="A file of your workspace (train.py) or a reference file",
    )
    def workspace_resource(name: str) -> str:
        with resource_refusals(f"autoresearch://workspace/{name}"):
            reader = agent()
            reading_as(reader)
            with authorship.workspace_lock(lab, reader):
                text = lab.workspace(reader).read_text(name)
                authors = authorship.workspace_authors(lab, reader)
            return agent_text(text, authors) or ""

    @mcp.resource(
        "experiment://{experiment_id}",
        name="experiment",
        mime_type="application/json",
        description="One experiment's full record",
    )
    def experiment_resource(experiment_id: str) -> str:
        with resource_refusals(f"experiment://{experiment_id}"):
            if not experiment_id.isascii() or not experiment_id.isdigit():
                shown = experiment_id if len(experiment_id) <= 40 else experiment_id[:40] + "..."
                raise ToolError(
                    f"experiment id {shown!r} is not a number; read experiment://ID with an id from "
                    f"get_history (digits 0-9, from 1 to {MAX_ROW_ID})"
                )
            row = lab.experiment(check_experiment_id(experiment_id))
            reading_as(reader_or_none())
            authors = code_authors(row)
            fields = {
                k: agent_text(v, row["agent"] if k in AGENT_WRITTEN else authors)
                if k in AGENT_WRITTEN + CODE_WRITTEN and isinstance(v, str)
                else v
                for k, v in row.items()
                if k not in ("code", "change_edits")  # the code and its normalised form
            }
            fields["flags"] = views.flags_for_reader(row)
            return json.dumps(fields, default=str)

    @mcp.prompt(
        name="research_loop",
        description="Start an autonomous research session: program.md with this server's settings",
    )
    def research_loop(
        goal: str = default_goal(lab.target), stopping_policy: str = DEFAULT_STOPPING
    ) -> str:
        return views.program_text(lab, goal, stopping_policy)
