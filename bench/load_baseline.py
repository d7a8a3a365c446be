"""The in-process baseline of bench/load.py: one FastAPI + uvicorn process, same protocol subset.

    .venv/bin/python bench/load_baseline.py --port P --model-url URL --data-dir DIR

It speaks what the load benchmark uses of the contract (../shared/spec/protocol.md): dev login,
`POST /conversations`, `POST /conversations/{id}/datasets` (+ `dataset_loaded`), `POST
/conversations/{id}/messages` (+ `query_status`, `chat_token`, `chat_complete`), `/ws?token=` with
JSON pings, `/health`. State lives in dicts (no database); the model stream is piped from the
google-genai SDK straight to the user's sockets on the same event loop; a dataset is downloaded
into DIR and described with Polars in a thread; SQL runs with Polars' SQLContext in a thread.
This is what a careful single-process peer costs; chatdf's figures are read against it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import uvicorn
from fastapi import FastAPI, Header, HTTPException, Request, WebSocket
from fastapi.responses import JSONResponse
from google import genai
from google.genai import types
from starlette.websockets import WebSocketDisconnect

MAX_TOOL_CALLS = 5
MAX_ROWS = 1000


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class Conversation:
    id: str
    user_id: str
    history: list[types.Content] = field(default_factory=list)
    datasets: list[dict[str, Any]] = field(default_factory=list)
    busy: bool = False


@dataclass
class State:
    model_url: str
    data_dir: Path
    tokens: dict[str, str] = field(default_factory=dict)  # token -> user id
    users: dict[str, str] = field(default_factory=dict)  # email -> user id
    conversations: dict[str, Conversation] = field(default_factory=dict)
    sockets: dict[str, set[WebSocket]] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    client: genai.Client | None = None
    http: httpx.AsyncClient | None = None


def tools() -> list[types.ToolUnion]:
    query = types.Schema(type=types.Type.STRING, description="One SQL SELECT.")
    return [
        types.Tool(
            function_declarations=[
                types.FunctionDeclaration(
                    name="execute_sql",
                    description="Run one read-only Polars SQL SELECT over the tables.",
                    parameters=types.Schema(
                        type=types.Type.OBJECT, properties={"query": query}, required=["query"]
                    ),
                )
            ]
        )
    ]


def create_app(state: State) -> FastAPI:
    app = FastAPI()
    config = types.GenerateContentConfig(
        system_instruction="You answer questions about the user's tables with SQL.",
        tools=tools(),
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )

    def user_of(authorization: str | None) -> str:
        token = (authorization or "").removeprefix("Bearer ").strip()
        user = state.tokens.get(token)
        if user is None:
            raise HTTPException(401, "Not signed in")
        return user

    def conversation_of(user: str, conversation_id: str) -> Conversation:
        conv = state.conversations.get(conversation_id)
        if conv is None or conv.user_id != user:
            raise HTTPException(404, "Conversation not found")
        return conv

    async def emit(user: str, event: dict[str, Any]) -> None:
        text = json.dumps(event)
        for ws in list(state.sockets.get(user, ())):
            try:
                await ws.send_text(text)
            except Exception:  # noqa: BLE001 - a gone socket is dropped, the others go on
                state.sockets.get(user, set()).discard(ws)

    def spawn(coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)

    @app.exception_handler(HTTPException)
    async def _error(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/auth/dev-login")
    async def dev_login(body: dict[str, Any]) -> dict[str, Any]:
        email = str(body.get("email") or "dev@localhost")
        user = state.users.setdefault(email, str(uuid.uuid4()))
        token = secrets.token_urlsafe(32)
        state.tokens[token] = user
        return {"token": token, "user": {"user_id": user, "email": email, "name": email}}

    @app.post("/conversations", status_code=201)
    async def new_conversation(authorization: str | None = Header(None)) -> dict[str, Any]:
        user = user_of(authorization)
        conv = Conversation(id=str(uuid.uuid4()), user_id=user)
        state.conversations[conv.id] = conv
        return {"id": conv.id, "title": "New conversation", "created_at": now_iso()}

    @app.post("/conversations/{conversation_id}/datasets", status_code=201)
    async def add_dataset(
        conversation_id: str, body: dict[str, Any], authorization: str | None = Header(None)
    ) -> dict[str, Any]:
        user = user_of(authorization)
        conv = conversation_of(user, conversation_id)
        url = str(body.get("url") or "")
        if not url.startswith(("http://", "https://")):
            raise HTTPException(400, "Invalid URL format")
        dataset = {"id": str(uuid.uuid4()), "url": url, "name": f"table{len(conv.datasets) + 1}"}
        conv.datasets.append(dataset)
        spawn(load(user, conv, dataset))
        return {"dataset_id": dataset["id"], "status": "loading"}

    async def load(user: str, conv: Conversation, dataset: dict[str, Any]) -> None:
        base = {"conversation_id": conv.id, "dataset_id": dataset["id"]}
        await emit(user, {"type": "dataset_loading", **base, "url": dataset["url"]})
        path = state.data_dir / f"{dataset['id']}.parquet"
        try:
            assert state.http is not None
            async with state.http.stream("GET", dataset["url"]) as r:
                r.raise_for_status()
                with path.open("wb") as out:
                    async for chunk in r.aiter_bytes(1 << 16):
                        out.write(chunk)
            described = await asyncio.to_thread(describe, path)
        except Exception as exc:  # noqa: BLE001 - reported to the user as the contract says
            dataset["status"] = "error"
            await emit(user, {"type": "dataset_error", **base, "error": str(exc)})
            return
        dataset.update(described, path=path, status="ready")
        public = {k: v for k, v in dataset.items() if k != "path"}
        await emit(
            user,
            {
                "type": "dataset_loaded",
                **base,
                "name": dataset["name"],
                **described,
                "dataset": public,
            },
        )

    @app.post("/conversations/{conversation_id}/messages", status_code=202)
    async def post_message(
        conversation_id: str, body: dict[str, Any], authorization: str | None = Header(None)
    ) -> dict[str, Any]:
        user = user_of(authorization)
        conv = conversation_of(user, conversation_id)
        content = str(body.get("content") or "")
        if not content.strip():
            raise HTTPException(400, "Message content is empty")
        if conv.busy:
            raise HTTPException(409, "A response is already being generated for this conversation")
        conv.busy = True
        message_id = str(uuid.uuid4())
        spawn(turn(user, conv, message_id, content))
        return {"message_id": message_id, "status": "processing"}

    async def turn(user: str, conv: Conversation, message_id: str, text: str) -> None:
        base = {"conversation_id": conv.id}
        try:
            await emit(user, {"type": "query_status", **base, "phase": "queued"})
            await emit(user, {"type": "query_status", **base, "phase": "generating"})
            asked = types.Content(role="user", parts=[types.Part(text=text)])
            contents = [*conv.history, asked]
            answer, sql_query, tokens = "", None, 0
            assert state.client is not None
            for _ in range(MAX_TOOL_CALLS + 1):
                stream = await state.client.aio.models.generate_content_stream(
                    model="gemini-2.5-flash", contents=contents, config=config
                )
                calls: list[types.Part] = []
                async for chunk in stream:
                    if chunk.usage_metadata:
                        tokens += chunk.usage_metadata.total_token_count or 0
                    candidate = chunk.candidates[0] if chunk.candidates else None
                    parts = candidate.content.parts if candidate and candidate.content else None
                    for part in parts or []:
                        if part.function_call is not None:
                            calls.append(part)
                        elif part.text:
                            answer += part.text
                            await emit(
                                user,
                                {
                                    "type": "chat_token",
                                    **base,
                                    "message_id": message_id,
                                    "token": part.text,
                                },
                            )
                if not calls:
                    break
                contents.append(types.Content(role="model", parts=calls))
                responses = []
                for part in calls:
                    assert part.function_call is not None
                    query = str((part.function_call.args or {}).get("query") or "")
                    await emit(user, {"type": "query_status", **base, "phase": "executing"})
                    try:
                        result = await asyncio.to_thread(run_sql, conv.datasets, query)
                        sql_query = query
                    except Exception as exc:  # noqa: BLE001 - the model reads the error
                        result = {"error": str(exc)}
                    await emit(user, {"type": "query_status", **base, "phase": "formatting"})
                    responses.append(
                        types.Part.from_function_response(name="execute_sql", response=result)
                    )
                contents.append(types.Content(role="user", parts=responses))
            conv.history += [asked, types.Content(role="model", parts=[types.Part(text=answer)])]
            message = {
                "id": str(uuid.uuid4()),
                "role": "assistant",
                "content": answer,
                "sql_query": sql_query,
                "token_count": tokens,
                "created_at": now_iso(),
            }
            await emit(
                user,
                {
                    "type": "chat_complete",
                    **base,
                    "message_id": message_id,
                    "token_count": tokens,
                    "sql_query": sql_query,
                    "message": message,
                },
            )
        except Exception as exc:  # noqa: BLE001 - a failed turn is an event, as in chatdf
            await emit(
                user,
                {
                    "type": "chat_error",
                    **base,
                    "message_id": message_id,
                    "error": "The model could not answer.",
                    "details": repr(exc),
                },
            )
        finally:
            conv.busy = False

    @app.websocket("/ws")
    async def ws_endpoint(websocket: WebSocket, token: str | None = None) -> None:
        user = state.tokens.get(token or "")
        await websocket.accept()
        if user is None:
            await websocket.close(code=4001, reason="unauthorized")
            return
        state.sockets.setdefault(user, set()).add(websocket)
        pinger = asyncio.get_running_loop().create_task(ping(websocket))
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            pinger.cancel()
            state.sockets.get(user, set()).discard(websocket)

    return app


async def ping(websocket: WebSocket) -> None:
    with contextlib.suppress(Exception):
        while True:
            await asyncio.sleep(30)
            await websocket.send_text('{"type": "ping"}')


def describe(path: Path) -> dict[str, Any]:
    """Schema and row count, as chatdf's dataset_loaded carries them."""
    schema = pl.read_parquet_schema(path)
    rows = int(pl.scan_parquet(path).select(pl.len()).collect().item())
    columns = [{"name": name, "type": str(dtype)} for name, dtype in schema.items()]
    return {"row_count": rows, "column_count": len(columns), "schema": columns}


def run_sql(datasets: list[dict[str, Any]], query: str) -> dict[str, Any]:
    frames = {d["name"]: pl.scan_parquet(d["path"]) for d in datasets if d.get("path")}
    frame = pl.SQLContext(frames).execute(query).collect()
    head = frame.head(MAX_ROWS)
    return {
        "columns": head.columns,
        "rows": [list(row) for row in head.rows()],
        "total_rows": frame.height,
        "truncated": frame.height > MAX_ROWS,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-url", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args()
    options = types.HttpOptions(
        base_url=args.model_url, retry_options=types.HttpRetryOptions(attempts=1)
    )
    state = State(
        model_url=args.model_url,
        data_dir=args.data_dir,
        client=genai.Client(api_key="fake", vertexai=False, http_options=options),
        http=httpx.AsyncClient(timeout=60),
    )
    uvicorn.run(
        create_app(state),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        ws="websockets-sansio",
        ws_max_size=64 * 1024,
        backlog=2048,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
