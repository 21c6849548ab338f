"""The base of every model a tool answers with: output schemas that are cheap to validate.

The SDK's Python client validates each structured tool result against the tool's output
schema with `jsonschema`, on every call. pydantic writes an optional field as
`anyOf: [{type: number}, {type: null}]`, and jsonschema walks each branch of an `anyOf` as a
subschema of its own: measured on a 20-row get_history answer, ~45% of the validation time
went to these branches. `{type: ["number", "null"]}` says the same thing in one keyword.

`WireModel` rewrites such a pair into a type list where that is exactly equivalent: the other
branch names one type and only keywords that apply to that type (`items`, `maximum`,
`additionalProperties`, ...), since a keyword of another type ignores a null. A branch with
`enum`, `const`, `$ref` or a combinator is left as pydantic wrote it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

NULL = {"type": "null"}
# Keywords that constrain every instance, null included: a branch holding one cannot merge.
TYPE_AGNOSTIC = frozenset(
    {"enum", "const", "$ref", "$dynamicRef", "anyOf", "oneOf", "allOf", "not", "if", "then", "else"}
)
# Where a schema holds subschemas that the rewrite walks into ($defs are other models'
# schemas, rewritten by their own class).
SUBSCHEMA_MAPS = ("properties", "patternProperties")
SUBSCHEMA_SINGLE = ("items", "additionalProperties", "contains")
SUBSCHEMA_LISTS = ("prefixItems", "anyOf", "oneOf", "allOf")


def merged_nullable(node: dict[str, Any]) -> dict[str, Any] | None:
    """`node` with its `anyOf: [X, null]` folded into X's type list, or None where not equivalent."""
    options = node.get("anyOf")
    if not isinstance(options, list) or len(options) != 2 or NULL not in options:
        return None
    other = options[1] if options[0] == NULL else options[0]
    kind = other.get("type") if isinstance(other, dict) else None
    if not isinstance(kind, str) or kind == "null" or TYPE_AGNOSTIC & other.keys():
        return None
    rest = {key: value for key, value in node.items() if key != "anyOf"}
    if TYPE_AGNOSTIC & rest.keys() or "type" in rest or rest.keys() & other.keys() - {"type"}:
        return None
    return {**rest, **other, "type": [kind, "null"]}


def compact_nullables(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of `schema` with every foldable `anyOf: [X, null]` folded, at any depth."""
    walked: dict[str, Any] = {}
    for key, value in schema.items():
        if key in SUBSCHEMA_MAPS and isinstance(value, dict):
            walked[key] = {name: compact_subschema(sub) for name, sub in value.items()}
        elif key in SUBSCHEMA_SINGLE and isinstance(value, dict):
            walked[key] = compact_subschema(value)
        elif key in SUBSCHEMA_LISTS and isinstance(value, list):
            walked[key] = [compact_subschema(sub) for sub in value]
        else:
            walked[key] = value
    return merged_nullable(walked) or walked


def compact_subschema(value: Any) -> Any:
    return compact_nullables(value) if isinstance(value, dict) else value


def fold_model_schema(schema: dict[str, Any], model: type[Any]) -> None:
    """pydantic's `json_schema_extra` hook: rewrite a model's own schema in place."""
    compacted = compact_nullables(schema)
    schema.clear()
    schema.update(compacted)


class WireModel(BaseModel):
    """A tool's answer (or part of one): its JSON schema folds optional fields into type lists."""

    model_config = ConfigDict(json_schema_extra=fold_model_schema)
