"""The provider-neutral conversation a turn sends to a model, and the tools it may call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ToolCall:
    """One function call the model asked for; `signature` is replayed to the model as received
    (Gemini's thought signature, natively or through its OpenAI-compatible endpoint)."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    signature: bytes | None = None


@dataclass(frozen=True)
class UserText:
    """What the person wrote."""

    text: str


@dataclass(frozen=True)
class ModelTurn:
    """What the model said in one call: text, then the calls it asked for.

    `signature` belongs to the text (Gemini may sign a text part; it is sent back with it).
    """

    text: str = ""
    calls: tuple[ToolCall, ...] = ()
    signature: bytes | None = None


@dataclass(frozen=True)
class ToolResult:
    """What our code answered to one call."""

    call: ToolCall
    result: dict[str, Any]


@dataclass(frozen=True)
class ToolResults:
    """The answers to every call of the model turn just before, in the same order."""

    results: tuple[ToolResult, ...]


Entry = UserText | ModelTurn | ToolResults


@dataclass(frozen=True)
class ToolSpec:
    """One tool the model may call; every parameter is a required string.

    Both providers' declarations come from these (Gemini's Schema, OpenAI's JSON schema).
    """

    name: str
    description: str
    parameters: tuple[tuple[str, str], ...]  # (name, description)

    def json_schema(self) -> dict[str, Any]:
        """The parameters as JSON schema (OpenAI's function-calling format)."""
        return {
            "type": "object",
            "properties": {
                name: {"type": "string", "description": description}
                for name, description in self.parameters
            },
            "required": [name for name, _ in self.parameters],
        }


TOOLS = (
    ToolSpec(
        name="execute_sql",
        description=(
            "Run one read-only Polars SQL SELECT over the conversation's tables "
            "and get back the columns, the first rows and the total row count."
        ),
        parameters=(("query", "One SQL SELECT."),),
    ),
    ToolSpec(
        name="load_dataset",
        description=(
            "Load a dataset (CSV, Parquet, JSON...) from an http(s) URL into the "
            "conversation as a new table; returns its table name and columns."
        ),
        parameters=(("url", "http(s) URL."),),
    ),
)
