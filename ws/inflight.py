"""What a user's actor had in flight, read off its event stream, so its death can be reported.

A session actor that dies (killed, out of memory, node lost) sends no `chat_complete` or
`chat_error` for the turn it was running, nor a `dataset_error` for a load: the client would
wait forever. The edge sees every event the actor sends its sockets, so it knows which turns
and loads were open, and when the stream breaks because the actor died it tells the sockets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from actors.datasets import INTERRUPTED
from actors.fanout import IN_FLIGHT
from chatdf import events

TURN_LOST = "The session stopped unexpectedly and this answer was interrupted; ask again"
LOAD_LOST = INTERRUPTED  # what the next actor writes to the dataset's row as well


@dataclass
class InFlight:
    turns: dict[str, str | None] = field(default_factory=dict)  # conversation -> message id
    loads: dict[str, str] = field(default_factory=dict)  # dataset id -> conversation

    def observe(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == IN_FLIGHT:  # the actor's own list: as a stream starts (a tab opened mid-turn)
            self.turns = dict(event.get("turns") or {})  # and as a retiring actor's ends
            self.loads = dict(event.get("loads") or {})
            return
        conv = str(event.get("conversation_id") or "")
        if kind == "query_status" and conv:
            self.turns.setdefault(conv, None)
        elif kind == "chat_token" and conv:
            self.turns[conv] = event.get("message_id")
        elif kind in ("chat_complete", "chat_error"):
            self.turns.pop(conv, None)
        elif kind == "dataset_loading":
            self.loads[str(event.get("dataset_id"))] = conv
        elif kind in ("dataset_loaded", "dataset_error"):
            self.loads.pop(str(event.get("dataset_id")), None)

    def lost(self) -> list[dict[str, Any]]:
        """The terminal events of everything still open; forgets them."""
        out = [
            events.ChatError(conversation_id=conv, error=TURN_LOST, message_id=message_id).wire()
            for conv, message_id in self.turns.items()
        ]
        out += [
            events.DatasetError(conversation_id=conv, dataset_id=dataset_id, error=LOAD_LOST).wire()
            for dataset_id, conv in self.loads.items()
        ]
        self.turns.clear()
        self.loads.clear()
        return out
