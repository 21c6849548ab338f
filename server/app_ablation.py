"""The ablate tool: which parts of a stacked change carry its gain, and whether they add up."""

from typing import Annotated, Any

from mcp.server import MCPServer
from pydantic import Field

from server.ablation import MAX_PARTS, Ablations
from server.lab import Lab
from server.store import MAX_ROW_ID
from server.tool_support import READ_ONLY, RUNS, AgentName, id_field, refusals


def register_ablation_tools(mcp: MCPServer, lab: Lab, agent: AgentName) -> None:
    """Add this feature's tools to `mcp`; `agent()` names the calling agent."""
    ablations = Ablations(lab)

    @mcp.tool(annotations=RUNS)
    def ablate(
        experiment_id: Annotated[
            int,
            id_field(
                "a successful experiment that made 2 to "
                f"{MAX_PARTS} changes at once (a combine, or a diff with several hunks)"
            ),
        ],
    ) -> dict[str, Any]:
        """Re-run a multi-part change leaving out one part at a time (paired fresh seeds): which
        parts carry the gain, do they add up. Charged to you; asked again: the same ablation."""
        with refusals():
            return ablations.ablate(agent(), experiment_id)

    @mcp.tool(annotations=READ_ONLY)
    def get_ablation(
        ablation_id: Annotated[
            int | None,
            Field(description="the ablation's id (from ablate)", ge=1, le=MAX_ROW_ID),
        ] = None,
        experiment_id: Annotated[
            int | None,
            Field(description="or the ablated experiment's id", ge=1, le=MAX_ROW_ID),
        ] = None,
    ) -> dict[str, Any]:
        """An ablation's runs and, once done, each part's contribution (positive: it helps), the
        total gain and whether the parts add up. Send ablation_id or experiment_id."""
        with refusals():
            return ablations.get(ablation_id, experiment_id)
