"""server/wire.py: folding `anyOf: [X, null]` into a type list changes no verdict of a validator.

Each case is a schema pydantic could write (or a hand-made one the fold must leave alone), and
instances that pass or fail it; the original and the folded schema must agree on every one
under the jsonschema validator the SDK's client uses. (Where an instance fails, the folded
schema may name a deeper path: `words[1]` rather than `words`.)
"""

from __future__ import annotations

from typing import Any, Literal

import pytest
from jsonschema.validators import validator_for
from pydantic import BaseModel, Field

from server.wire import WireModel, compact_nullables


class Inner(BaseModel):
    x: int


class Sample(BaseModel):
    number: float | None
    bounded: int | None = Field(None, ge=0, le=10)
    text: str | None = Field(None, max_length=3, description="short text")
    words: list[str] | None = None
    mapping: dict[str, int] | None = None
    choice: Literal["a", "b"] | None = None  # enum: must not fold
    inner: Inner | None = None  # $ref: must not fold
    nested: list[float | None] = Field(default_factory=list)
    either: int | str | None = None  # three options: must not fold


class WireSample(WireModel, Sample):
    """Sample's fields, WireModel's schema."""


INSTANCES: list[dict[str, Any]] = [
    {"number": None},
    {"number": 1.5},
    {"number": "1.5"},
    {},
    {"number": 1, "bounded": None},
    {"number": 1, "bounded": 11},
    {"number": 1, "bounded": -1},
    {"number": 1, "bounded": 3.5},
    {"number": 1, "text": "abcd"},
    {"number": 1, "text": None},
    {"number": 1, "text": 7},
    {"number": 1, "words": ["a", None]},
    {"number": 1, "words": None},
    {"number": 1, "words": "a"},
    {"number": 1, "mapping": {"k": "v"}},
    {"number": 1, "mapping": {"k": 1}},
    {"number": 1, "mapping": None},
    {"number": 1, "choice": None},
    {"number": 1, "choice": "c"},
    {"number": 1, "choice": "a"},
    {"number": 1, "inner": None},
    {"number": 1, "inner": {"x": "y"}},
    {"number": 1, "inner": {"x": 2}},
    {"number": 1, "nested": [1.0, None, "z"]},
    {"number": 1, "nested": [None]},
    {"number": 1, "either": None},
    {"number": 1, "either": 2.5},
    {"number": 1, "either": "s"},
]


def valid(schema: dict[str, Any], instance: Any) -> bool:
    return bool(validator_for(schema)(schema).is_valid(instance))


def test_the_fold_is_equivalent_for_pydantic_schemas() -> None:
    plain = Sample.model_json_schema()
    folded = WireSample.model_json_schema()
    props = folded["properties"]
    assert props["number"]["type"] == ["number", "null"] and "anyOf" not in props["number"]
    assert props["bounded"] == {
        "default": None,
        "maximum": 10,
        "minimum": 0,
        "title": "Bounded",
        "type": ["integer", "null"],
    }
    assert props["text"]["description"] == "short text" and props["text"]["maxLength"] == 3
    assert props["nested"]["items"] == {"type": ["number", "null"]}
    for left_alone in ("choice", "inner", "either"):
        assert props[left_alone]["anyOf"] == plain["properties"][left_alone]["anyOf"], left_alone
    validator_for(folded).check_schema(folded)
    verdicts = []
    for instance in INSTANCES:
        assert valid(plain, instance) == valid(folded, instance), instance
        verdicts.append(valid(plain, instance))
    assert 0 < sum(verdicts) < len(verdicts)  # the cases hold both passes and failures


@pytest.mark.parametrize(
    "schema",
    [
        {"anyOf": [{"type": "string", "enum": ["a"]}, {"type": "null"}]},
        {"anyOf": [{"$ref": "#/$defs/X"}, {"type": "null"}]},
        {"anyOf": [{"type": "string"}, {"type": "null"}], "type": "string"},
        {"anyOf": [{"type": "string", "title": "A"}, {"type": "null"}], "title": "B"},
        {"anyOf": [{"type": ["string", "integer"]}, {"type": "null"}]},
        {"anyOf": [{"type": "string"}, {"type": "null"}], "not": {"const": "x"}},
        {"anyOf": [{"type": "string"}, {"type": "integer"}]},
    ],
)
def test_what_is_not_exactly_equivalent_is_left_alone(schema: dict[str, Any]) -> None:
    assert compact_nullables(schema) == schema


def test_the_fold_is_idempotent_and_leaves_its_input_alone() -> None:
    schema = {"anyOf": [{"type": "number"}, {"type": "null"}], "default": None}
    once = compact_nullables(schema)
    assert once == {"type": ["number", "null"], "default": None}
    assert compact_nullables(once) == once
    assert schema == {"anyOf": [{"type": "number"}, {"type": "null"}], "default": None}
