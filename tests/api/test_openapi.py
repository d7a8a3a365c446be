"""/openapi.json describes every REST answer and error body, and the models change no byte.

The response models (chatdf/schemas.py) were added to routes that already answered: the live
tests compare each answer with what its producer (the store function or the actor method the
route returns) makes, rendered as the routes rendered it before, byte for byte.
"""

from __future__ import annotations

import io
import json
import uuid
from datetime import date
from typing import Any

import httpx
import polars as pl
import ray
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts

from actors.session_ray import get_session_actor
from api.app import PUBLIC_PATHS, create_app
from chatdf import schemas
from chatdf.db import Conversation, Database, Dataset, User
from chatdf.settings import Settings
from chatdf.store import conversation_detail, dataset_json, list_conversations, user_json
from tests.fakes.fake_data_server import FakeDataServer
from tests.fakes.fake_gemini import FakeGemini
from tests.live import LiveServer, wait_until

NON_JSON_ANSWERS = (FileResponse, RedirectResponse)  # the sample file, the OAuth redirect
ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}
# /health answers 503 with its own body (degraded), as protocol.md's health route always has.
OWN_ERROR_BODIES = {
    ("/health", "503"): {"$ref": "#/components/schemas/Health"},
    # The readiness probe's 503 is its own answer too: "unready", with what does not answer.
    ("/health/ready", "503"): {"$ref": "#/components/schemas/Ready"},
}


def wire(value: Any) -> bytes:
    """JSON as the routes rendered it before they had models (Starlette's JSONResponse)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def api_routes(settings: Settings) -> list[RouteContext]:
    """Every REST route of the app as served (included routers' settings applied)."""
    routes = iter_route_contexts(create_app(settings).routes)
    return [r for r in routes if isinstance(r.original_route, APIRoute)]


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, m, op) for path, ops in doc["paths"].items() for m, op in ops.items()]


# The document ---------------------------------------------------------------------------------


def test_every_route_declares_a_response_model(settings: Settings) -> None:
    routes = [r for r in api_routes(settings) if r.include_in_schema]
    assert len(routes) >= 20
    undeclared = []
    for route in routes:
        answer = route.response_class
        if route.response_model is None and not issubclass(answer, NON_JSON_ANSWERS):
            undeclared.append(f"{sorted(route.methods or ())} {route.path}")
        elif route.response_model is not None:
            assert route.response_model is getattr(schemas, route.response_model.__name__)
            # Not FastAPI's default: that writes JSON with pydantic, changing floats' text.
            assert answer is JSONResponse, route.path
        assert "default" in route.responses, route.path  # any other failure: the error body
    assert undeclared == []


def test_every_documented_error_status_has_the_error_body(settings: Settings) -> None:
    doc = create_app(settings).openapi()
    error_body = doc["components"]["schemas"]["ErrorBody"]
    assert error_body["required"] == ["error", "details"]
    assert error_body["properties"]["error"]["type"] == "string"
    assert error_body["properties"]["details"]["anyOf"] == [{"type": "string"}, {"type": "null"}]
    checked = 0
    for path, method, op in operations(doc):
        for status, response in op["responses"].items():
            if status != "default" and int(status) < 400:
                continue
            expected = OWN_ERROR_BODIES.get((path, status), ERROR_BODY)
            assert response["content"]["application/json"]["schema"] == expected, (
                method,
                path,
                status,
            )
            assert response["description"]
            checked += 1
        assert "422" not in op["responses"], (method, path)  # validation errors are 400s
    assert checked > 60
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def test_the_statuses_every_route_can_answer_are_documented(settings: Settings) -> None:
    doc = create_app(settings).openapi()
    for path, method, op in operations(doc):
        statuses = set(op["responses"])
        if path not in PUBLIC_PATHS:
            assert {"401", "503"} <= statuses, (method, path)
        if "requestBody" in op:
            assert {"400", "413"} <= statuses, (method, path)
        if "{conversation_id}" in path:
            assert "404" in statuses, (method, path)
    paths = doc["paths"]
    assert "201" in paths["/conversations"]["post"]["responses"]
    assert "202" in paths["/conversations/{conversation_id}/messages"]["post"]["responses"]
    assert "409" in paths["/conversations/{conversation_id}/messages"]["post"]["responses"]
    assert "429" in paths["/conversations/{conversation_id}/messages"]["post"]["responses"]
    refresh = paths["/conversations/{conversation_id}/datasets/{dataset_id}/refresh"]["post"]
    assert "502" in refresh["responses"]
    assert "302" in paths["/auth/google/callback"]["get"]["responses"]


def test_success_answers_reference_their_models(settings: Settings) -> None:
    doc = create_app(settings).openapi()
    for path, method, op in operations(doc):
        for status, response in op["responses"].items():
            if status.startswith("2") and "application/json" in response.get("content", {}):
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert hasattr(schemas, ref.rsplit("/", 1)[1]), (method, path, ref)
    dataset = doc["components"]["schemas"]["Dataset"]
    wire_names = [f.alias or name for name, f in schemas.Dataset.model_fields.items()]
    assert list(dataset["properties"]) == wire_names and "schema" in wire_names
    assert dataset["required"] == list(dataset["properties"])  # nulls are sent, not left out


def test_openapi_and_asyncapi_need_no_session(live: LiveServer) -> None:
    with live.client() as anon:
        openapi = anon.get("/openapi.json")
        asyncapi = anon.get("/asyncapi.json")
    assert openapi.status_code == 200 and "/conversations" in openapi.json()["paths"]
    assert asyncapi.status_code == 200
    assert asyncapi.headers["content-type"] == "application/json"
    assert asyncapi.json()["asyncapi"] == "3.0.0"
    assert asyncapi.json()["channels"]["events"]["address"] == "/ws"


# Error answers on the wire match the document -------------------------------------------------


def test_error_answers_are_documented_for_their_route(
    live: LiveServer, data_server: FakeDataServer
) -> None:
    doc = live.app.openapi()
    _token, _user_id, client = live.login(f"doc-{uuid.uuid4().hex[:8]}@example.com")
    with client, live.client() as anon:
        conv = client.post("/conversations").json()["id"]
        url = data_server.add("/doc.csv", b"id\n1\n")
        assert client.post(f"/conversations/{conv}/datasets", json={"url": url}).status_code == 201
        c, convs = "/conversations/{conversation_id}", f"/conversations/{conv}"
        cases: list[tuple[str, str, str, dict[str, Any] | None, httpx.Client, int]] = [
            ("GET", "/conversations", "/conversations", None, anon, 401),
            ("GET", c, f"/conversations/{uuid.uuid4()}", None, client, 404),
            ("PATCH", c, convs, {"title": ""}, client, 400),
            ("PATCH", c, convs, {"title": "x" * 2_000_000}, client, 413),
            ("POST", c + "/datasets", convs + "/datasets", {"url": "ftp://x"}, client, 400),
            ("POST", c + "/datasets", convs + "/datasets", {"url": url}, client, 400),
            ("POST", c + "/messages", convs + "/messages", {"content": "hi"}, client, 503),
            ("POST", c + "/query", convs + "/query", {"sql": "DROP TABLE x"}, client, 400),
            ("POST", "/auth/dev-login", "/auth/dev-login", {"email": "nope"}, anon, 400),
            ("GET", "/auth/google/callback", "/auth/google/callback?state=x", None, anon, 403),
        ]
        for method, template, target, body, who, status in cases:
            r = who.request(method, target, json=body)
            assert r.status_code == status, (method, target, r.text)
            assert schemas.ErrorBody.model_validate(r.json()).model_dump() == r.json()
            documented = doc["paths"][template][method.lower()]["responses"]
            assert str(status) in documented, (method, template, status)


# The answers are unchanged by their models ----------------------------------------------------


def typed_parquet() -> bytes:
    """Values whose JSON text pydantic's own writer would print differently (1e-05) or that
    the value mapping turns into text, lists and objects (docs/sql.md)."""
    frame = pl.DataFrame(
        {
            "f": [0.00001, 1e16, None],
            "s": ["é ☃", "a", None],
            "n": [1, 2**53, None],
            "l": [[1, 2], [], None],
            "st": [{"a": 1.5}, {"a": None}, None],
            "d": [date(2026, 12, 1), None, date(1970, 1, 1)],
            "b": [True, False, None],
        }
    )
    buf = io.BytesIO()
    frame.write_parquet(buf)
    return buf.getvalue()


def wait_dataset(client: httpx.Client, conv: str, dataset_id: str, status: str) -> None:
    def reached() -> bool:
        found = client.get(f"/conversations/{conv}").json()["datasets"]
        return any(d["id"] == dataset_id and d["status"] == status for d in found)

    assert wait_until(reached, 30), f"dataset {dataset_id} never {status}"


def test_answers_are_what_the_routes_answered_before_they_had_models(
    chat_live: LiveServer, fake_gemini: FakeGemini, data_server: FakeDataServer
) -> None:
    live = chat_live
    _token, user_id, client = live.login(f"wire-{uuid.uuid4().hex[:8]}@example.com")
    db = Database(live.settings.resolved_database_url)
    try:
        with client:
            conv = client.post("/conversations", json={"title": "Wire ☃"}).json()["id"]
            good = data_server.add("/typed.parquet", typed_parquet())
            ok = client.post(f"/conversations/{conv}/datasets", json={"url": good}).json()
            bad = data_server.url("/missing.csv")
            failed = client.post(f"/conversations/{conv}/datasets", json={"url": bad}).json()
            wait_dataset(client, conv, ok["dataset_id"], "ready")
            wait_dataset(client, conv, failed["dataset_id"], "error")
            sql = "SELECT * FROM table1"
            fake_gemini.script_sql(sql, text="Let me look. ")
            fake_gemini.script_text("Three rows.")
            posted = client.post(f"/conversations/{conv}/messages", json={"content": "Rows?"})
            assert posted.status_code == 202

            def answered() -> bool:
                messages = client.get(f"/conversations/{conv}").json()["messages"]
                return any(m["role"] == "assistant" for m in messages)

            assert wait_until(answered, 30)
            dataset_path = f"/conversations/{conv}/datasets/{ok['dataset_id']}"
            renamed = client.patch(dataset_path, json={"tableName": "typed"})
            refreshed = client.post(f"{dataset_path}/refresh")
            detail = client.get(f"/conversations/{conv}")
            listing = client.get("/conversations")
            me = client.get("/auth/me")
            query = client.post(f"/conversations/{conv}/query", json={"sql": "SELECT * FROM typed"})
            usage = client.get("/usage")
        with db.session() as s:
            conversation = s.get(Conversation, conv)
            assert conversation is not None
            produced_detail = conversation_detail(s, conversation)
            produced_listing = {"conversations": list_conversations(s, user_id)}
            user = s.get(User, user_id)
            assert user is not None
            produced_me = user_json(user)
            row = s.get(Dataset, ok["dataset_id"])
            assert row is not None
            produced_dataset = dataset_json(row)
        actor = get_session_actor(user_id, live.settings)
        produced_query = ray.get(actor.query.remote(conv, "SELECT * FROM typed"))
    finally:
        db.dispose()

    assert detail.content == wire(produced_detail)
    roles = [m["role"] for m in produced_detail["messages"]]
    assert roles == ["user", "assistant"] and produced_detail["messages"][1]["sql_query"] == sql
    assert {d["status"] for d in produced_detail["datasets"]} == {"ready", "error"}
    assert listing.content == wire(produced_listing)
    assert me.content == wire(produced_me)
    assert refreshed.content == wire(produced_dataset)
    assert renamed.json() == {**produced_dataset, "loaded_at": renamed.json()["loaded_at"]}
    assert query.content == wire(query.json())  # rendered by json.dumps, not pydantic's writer
    assert b"[1e-05," in query.content and b"1e+16" in query.content
    assert query.json() == {**produced_query, "execution_ms": query.json()["execution_ms"]}
    assert list(usage.json()) == list(schemas.Usage.model_fields)
    assert usage.content == wire(usage.json())
    assert isinstance(usage.json()["usage_percent"], float)
