"""The AsyncAPI 3.0 document of `/ws`, generated from the event models in `chatdf.events`.

The payload schemas are pydantic's JSON Schema of the `ServerEvent` union (serialization mode:
what goes on the wire), so a field added to a model is in the document at once. The edge serves
it at `/asyncapi.json`; `docs/asyncapi.json` is the same document, committed (regenerate with
`.venv/bin/python -m chatdf.asyncapi > docs/asyncapi.json`; a test fails when they differ).
"""

from __future__ import annotations

import inspect
import json
from typing import Any, get_args

from pydantic import BaseModel

from chatdf import events

VERSION = "3.0.0"
SCHEMAS = "#/components/schemas/{model}"
CHANNEL = "events"
WS_BINDING_VERSION = "0.1.0"

DESCRIPTION = """\
The WebSocket half of chatdf's wire contract (REST is in `/openapi.json`).

Connect to `/ws?token=<session token>`, or without the query with the `session_token` cookie
(then the `Origin` header must be an allowed origin, `CORS_ORIGINS`). The server sends JSON
text frames, each with a `type`; clients ignore types they do not know. Every event for a user
goes to each of their connections (tabs). On reconnect nothing is replayed: re-read state with
`GET /conversations/{id}`.

Close codes: 4001 missing, unknown or expired token, or the session signed out or ended;
4000 nothing heard from the client for HEARTBEAT_TIMEOUT seconds; 4002 the client does not
read fast enough (send queue full or a write timed out); 1009 a client frame over
WS_MAX_FRAME_BYTES; 1001 the edge is shutting down."""


def event_models() -> tuple[type[BaseModel], ...]:
    """The members of the `ServerEvent` union, in their declared order."""
    union, _discriminator = get_args(events.ServerEvent)
    return tuple(get_args(union))


def event_type(model: type[BaseModel]) -> str:
    """The `type` literal a model puts on the wire."""
    (literal,) = get_args(model.model_fields["type"].annotation)
    return str(literal)


def _summary(model: type[BaseModel]) -> str:
    return (inspect.getdoc(model) or "").split("\n\n")[0].replace("\n", " ")


def _schemas() -> dict[str, Any]:
    """Every payload schema, keyed by model name, plus `ServerEvent` (the union) itself."""
    union = events.server_event_adapter.json_schema(mode="serialization", ref_template=SCHEMAS)
    schemas: dict[str, Any] = union.pop("$defs")
    pong = events.Pong.model_json_schema(mode="serialization", ref_template=SCHEMAS)
    schemas[events.Pong.__name__] = pong
    # AsyncAPI's Schema Object names the discriminating property; OpenAPI's form is an object.
    union["discriminator"] = union["discriminator"]["propertyName"]
    union["description"] = "Any server event; `type` says which."
    schemas["ServerEvent"] = union
    return dict(sorted(schemas.items()))


def _message(model: type[BaseModel], name: str) -> dict[str, Any]:
    return {
        "name": name,
        "title": model.__name__,
        "summary": _summary(model),
        "contentType": "application/json",
        "payload": {"$ref": SCHEMAS.format(model=model.__name__)},
    }


def asyncapi_document() -> dict[str, Any]:
    """The whole document, as JSON-ready data."""
    sent = {event_type(m): _message(m, event_type(m)) for m in event_models()}
    received = {"pong": _message(events.Pong, "pong")}
    channel_messages = {
        name: {"$ref": f"#/components/messages/{name}"} for name in (*sent, *received)
    }
    channel_ref = {"$ref": f"#/channels/{CHANNEL}"}
    return {
        "asyncapi": VERSION,
        "info": {"title": "chatdf events", "version": "0.1.0", "description": DESCRIPTION},
        "defaultContentType": "application/json",
        "servers": {
            "edge": {
                "host": "127.0.0.1:8000",
                "protocol": "ws",
                "description": "An edge (`chatdf serve`); behind TLS: `wss`, PUBLIC_URL's host",
            }
        },
        "channels": {
            CHANNEL: {
                "address": "/ws",
                "title": "A user's events",
                "description": "Server events of the signed-in user, and the client's pongs.",
                "servers": [{"$ref": "#/servers/edge"}],
                "messages": channel_messages,
                "bindings": {
                    "ws": {
                        "method": "GET",
                        "query": {
                            "type": "object",
                            "properties": {
                                "token": {
                                    "type": "string",
                                    "description": "The session token (else the cookie is used)",
                                }
                            },
                        },
                        "bindingVersion": WS_BINDING_VERSION,
                    }
                },
            }
        },
        "operations": {
            "sendEvents": {
                "action": "send",
                "title": "Server events",
                "summary": "What the server sends: JSON text frames, one event each.",
                "channel": channel_ref,
                "messages": [{"$ref": f"#/channels/{CHANNEL}/messages/{n}"} for n in sent],
            },
            "receivePong": {
                "action": "receive",
                "title": "Client frames",
                "summary": (
                    "The client answers each ping with a pong. Anything it sends only proves it "
                    "alive (so do protocol-level pongs); the content is ignored."
                ),
                "channel": channel_ref,
                "messages": [{"$ref": f"#/channels/{CHANNEL}/messages/{n}"} for n in received],
            },
        },
        "components": {
            "schemas": _schemas(),
            "messages": {**sent, **received},
        },
    }


def render() -> str:
    """The document as `docs/asyncapi.json` holds it."""
    return json.dumps(asyncapi_document(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(render(), end="")
