"""The AsyncAPI document of /ws: valid AsyncAPI 3.0, committed as generated, and complete.

Complete means every event type the code can send is in it, found two ways: the members of
the `ServerEvent` union, and a scan of the sending code (actors/, ws/) for event models built
and `"type": "..."` literals written, so an event put on the socket outside the models fails.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel

from chatdf import events, schemas
from chatdf.asyncapi import asyncapi_document, event_models, event_type, render

ROOT = Path(__file__).resolve().parents[2]
SPEC_SCHEMA = ROOT / "tests" / "fixtures" / "asyncapi-specs" / "3.0.0.json"
COMMITTED = ROOT / "docs" / "asyncapi.json"
SENDING_CODE = ("actors", "ws")
# ASGI's own message types (`{"type": "websocket.close"}`) are not events.
ASGI_MESSAGE = re.compile(r"^(http|websocket|lifespan)\.")
TYPE_IN_TEXT = re.compile(r'"type"\s*:\s*"([A-Za-z0-9_.]+)"')  # pre-serialized JSON text


def spec_validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SPEC_SCHEMA.read_text())
    return jsonschema.Draft7Validator(schema)


def all_subclasses(cls: type[BaseModel]) -> set[type[BaseModel]]:
    found: set[type[BaseModel]] = set()
    for sub in cls.__subclasses__():
        found |= {sub, *all_subclasses(sub)}
    return found


def documented_server_messages(doc: dict[str, Any]) -> set[str]:
    refs = doc["operations"]["sendEvents"]["messages"]
    return {ref["$ref"].rsplit("/", 1)[1] for ref in refs}


def _text(node: ast.expr) -> str | None:
    """The value of a string constant, else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _literal_type(annotation: ast.expr | None) -> str | None:
    """`X` of an annotation `Literal["X"]` (a model's `type: Literal["X"]` field)."""
    if isinstance(annotation, ast.Subscript) and isinstance(annotation.slice, ast.Constant):
        name = annotation.value
        if isinstance(name, ast.Name | ast.Attribute) and ast.unparse(name).endswith("Literal"):
            value = annotation.slice.value
            return value if isinstance(value, str) else None
    return None


def sent_types(source: str, model_types: dict[str, str]) -> set[str]:
    """Event types one module can put on the socket: models built (by class name), dict
    literals and `dict(type=...)` calls with a constant `type`, `"type": "..."` in JSON text,
    and classes declaring a `type: Literal[...]` field of their own."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                text = _text(value)
                if key is not None and _text(key) == "type" and text is not None:
                    found.add(text)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in model_types:
                found.add(model_types[name])
            for kw in node.keywords:
                text = _text(kw.value)
                if name == "dict" and kw.arg == "type" and text is not None:
                    found.add(text)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.update(TYPE_IN_TEXT.findall(node.value))
        elif isinstance(node, ast.AnnAssign) and ast.unparse(node.target) == "type":
            literal = _literal_type(node.annotation)
            if literal is not None:
                found.add(literal)
    return {t for t in found if not ASGI_MESSAGE.match(t)}


def model_types() -> dict[str, str]:
    return {model.__name__: event_type(model) for model in event_models()}


# Files whose `"type": ...` literals are model-API payloads (JSON schemas of the tools, the
# OpenAI tool format), which go to the model and never on the socket.
MODEL_API_PAYLOADS = {"actors/conversation.py", "actors/openai_model.py"}


def types_sent_by_the_code() -> dict[str, set[str]]:
    """Per source file of actors/ and ws/, the event types it can send."""
    out: dict[str, set[str]] = {}
    for package in SENDING_CODE:
        for path in sorted((ROOT / package).rglob("*.py")):
            if str(path.relative_to(ROOT)) in MODEL_API_PAYLOADS:
                continue
            found = sent_types(path.read_text(), model_types())
            if found:
                out[str(path.relative_to(ROOT))] = found
    return out


# The document --------------------------------------------------------------------------------


def test_the_document_is_valid_asyncapi_3() -> None:
    """Checked against the official AsyncAPI 3.0.0 JSON Schema (vendored, see its README)."""
    doc = asyncapi_document()
    assert doc["asyncapi"] == "3.0.0"
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in spec_validator().iter_errors(doc)]
    assert errors == []


def test_the_validator_refuses_a_broken_document() -> None:
    """The check above can fail: a wrong action and a non-schema payload are reported."""
    doc = asyncapi_document()
    doc["operations"]["sendEvents"]["action"] = "publish"  # AsyncAPI 2's word
    doc["components"]["schemas"]["Ping"]["properties"]["type"]["type"] = 5
    assert len(list(spec_validator().iter_errors(doc))) >= 2


def test_every_reference_resolves() -> None:
    doc = asyncapi_document()

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return own + [r for value in node.values() for r in refs(value)]
        if isinstance(node, list):
            return [r for item in node for r in refs(item)]
        return []

    found = refs(doc)
    assert len(found) > 20
    for ref in found:
        assert ref.startswith("#/"), ref
        target: Any = doc
        for part in ref[2:].split("/"):
            assert isinstance(target, dict) and part in target, ref
            target = target[part]


def test_docs_asyncapi_json_is_the_generated_document() -> None:
    """docs/asyncapi.json cannot drift from the models. To refresh it:
    `.venv/bin/python -m chatdf.asyncapi > docs/asyncapi.json`."""
    assert COMMITTED.read_text() == render(), "regenerate docs/asyncapi.json (see docstring)"


def test_the_document_lists_the_channel_its_query_and_the_client_pong() -> None:
    doc = asyncapi_document()
    channel = doc["channels"]["events"]
    assert channel["address"] == "/ws"
    assert "token" in channel["bindings"]["ws"]["query"]["properties"]
    assert doc["operations"]["receivePong"]["action"] == "receive"
    pong = doc["components"]["messages"]["pong"]["payload"]["$ref"]
    assert pong == "#/components/schemas/Pong"
    assert doc["components"]["schemas"]["Pong"]["properties"]["type"]["const"] == "pong"
    for code in ("4001", "4000", "4002", "1009"):
        assert code in doc["info"]["description"]


# Payloads describe what the models put on the wire --------------------------------------------


MESSAGE = {
    "id": "00000000-0000-4000-8000-000000000001",
    "role": "assistant",
    "content": "North has 15.",
    "sql_query": None,
    "token_count": 12,
    "created_at": "2026-12-01T10:00:00.123456Z",
}
DATASET = {
    "id": "00000000-0000-4000-8000-000000000002",
    "name": "table1",
    "url": "http://127.0.0.1:1/a.csv",
    "status": "ready",
    "row_count": 3,
    "column_count": 1,
    "schema": [{"name": "id", "type": "integer"}],
    "error": None,
    "format": "csv",
    "loaded_at": "2026-12-01T10:00:00Z",
}
EXAMPLES: list[events.ServerEvent] = [
    events.Ping(),
    events.ChatToken(conversation_id="c", message_id="m", token="Hi"),
    events.ChatComplete(
        conversation_id="c",
        message_id="m",
        token_count=12,
        sql_query=None,
        message=schemas.Message.model_validate(MESSAGE),
    ),
    events.ChatError(conversation_id="c", error="The model is not configured"),
    events.DatasetLoading(conversation_id="c", dataset_id="d", url="http://x/a.csv"),
    events.DatasetLoaded(
        conversation_id="c",
        dataset_id="d",
        name="table1",
        row_count=3,
        column_count=1,
        schema=[schemas.Column(name="id", type="integer")],
        dataset=schemas.Dataset.model_validate(DATASET),
    ),
    events.DatasetError(conversation_id="c", dataset_id="d", error="Not found"),
    events.QueryStatus(conversation_id="c", phase="executing"),
    events.RateLimitWarning(usage_percent=81.25, remaining_tokens=10),
    events.RateLimitExceeded(resets_in_seconds=60),
]


def payload_validator(doc: dict[str, Any], model_name: str) -> jsonschema.Draft7Validator:
    """The message's payload schema, its references resolved within the document."""
    schema = {"$ref": f"#/components/schemas/{model_name}", "components": doc["components"]}
    return jsonschema.Draft7Validator(schema)


def test_every_model_has_an_example_here() -> None:
    assert {type(e) for e in EXAMPLES} == set(event_models())


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_each_payload_schema_accepts_its_events_wire_form(event: events.ServerEvent) -> None:
    doc = asyncapi_document()
    wire = event.wire()
    assert list(payload_validator(doc, type(event).__name__).iter_errors(wire)) == []
    assert events.parse_event(wire).wire() == wire  # and the wire form parses back


def test_payload_schemas_require_every_field_the_wire_always_has() -> None:
    """Nulls are sent, not left out: a frame without `details` is not a chat_error."""
    doc = asyncapi_document()
    wire = events.ChatError(conversation_id="c", error="x").wire()
    del wire["details"]
    assert list(payload_validator(doc, "ChatError").iter_errors(wire)) != []
    assert doc["components"]["schemas"]["DatasetLoaded"]["properties"]["dataset"] == {
        "$ref": "#/components/schemas/Dataset",
        "description": "The whole dataset object",
    }


# Every event type the code can send is documented ---------------------------------------------


def test_every_event_model_is_in_the_union_and_the_document() -> None:
    doc = asyncapi_document()
    union = set(event_models())
    assert {m for m in all_subclasses(events._Event)} <= union  # no model outside the union
    assert {event_type(m) for m in union} == documented_server_messages(doc)
    for model in union:
        assert doc["components"]["messages"][event_type(model)]["payload"] == {
            "$ref": f"#/components/schemas/{model.__name__}"
        }


def test_every_event_type_the_code_sends_is_documented() -> None:
    """The scan of actors/ and ws/ finds each union member being sent (so it sees the sending
    code at all), and nothing else: a new `{"type": "x"}` or model there must be documented."""
    sent = types_sent_by_the_code()
    everything = set().union(*sent.values())
    documented = documented_server_messages(asyncapi_document())
    undocumented = {path: types - documented for path, types in sent.items() if types - documented}
    assert undocumented == {}
    assert everything == documented, "a documented event no code sends: " + str(
        documented - everything
    )


def test_the_scan_sees_each_way_of_sending() -> None:
    source = """
import json
from chatdf import events
from chatdf.events import ChatToken
A = json.dumps({"type": "new_literal", "x": 1})
B = events.QueryStatus(conversation_id="c", phase="queued")
C = ChatToken(conversation_id="c", message_id="m", token="t")
D = '{"type":"pre_serialized","token":"%s"}'
E = dict(type="keyword_built")
F = {"type": "websocket.close", "code": 1000}
G = {"type": some_call()}
class Other:
    type: Literal["own_model"] = "own_model"
"""
    assert sent_types(source, model_types()) == {
        "new_literal",
        "query_status",
        "chat_token",
        "pre_serialized",
        "keyword_built",
        "own_model",
    }
