"""Harmless tools every Safer-Claw agent can be allowed: they reach nothing outside.

``time.now`` tells the time in the owner's time zone; ``notes.*`` keep a small
per-agent notebook in the control plane's database (bounded: at most
``Note.MAX_PER_AGENT`` notes of ``Note.MAX_TEXT_CHARS`` each). Registered by
``AgentsConfig.ready``; like every tool, an agent gets them only through its
allow-list.
"""

from __future__ import annotations

import zoneinfo

from django.db import transaction
from django.utils import timezone

from agents.conversations import Note
from agents.models import Agent
from agents.tools import Tool, ToolCall, ToolError, ToolResult, register


def _time_now(call: ToolCall) -> ToolResult:
    zone = call.agent.time_zone or "UTC"
    local = timezone.now().astimezone(zoneinfo.ZoneInfo(zone))
    return ToolResult(
        data={
            "time": local.isoformat(timespec="seconds"),
            "time_zone": zone,
            "weekday": local.strftime("%A"),
        }
    )


def _notes_save(call: ToolCall) -> ToolResult:
    text = call.arguments["text"].replace("\x00", "").strip()
    if not text:
        raise ToolError("A note needs some text.")
    with transaction.atomic():
        # The agent's row lock keeps two saves from both taking the last place.
        Agent.objects.select_for_update().only("id").get(pk=call.agent.pk)
        if Note.objects.filter(agent=call.agent).count() >= Note.MAX_PER_AGENT:
            raise ToolError(
                f"The notebook is full ({Note.MAX_PER_AGENT} notes); the owner can clear it."
            )
        note = Note.objects.create(agent=call.agent, text=text)
    return ToolResult(data={"id": note.id, "saved_at": note.created_at.isoformat()})


def _note(note: Note) -> dict[str, object]:
    return {"id": note.id, "text": note.text, "saved_at": note.created_at.isoformat()}


def _notes_search(call: ToolCall) -> ToolResult:
    limit = call.arguments.get("limit", 10)
    notes = Note.objects.filter(agent=call.agent, text__icontains=call.arguments["query"])[:limit]
    found = [_note(note) for note in notes]
    return ToolResult(data={"notes": found}, meta={"count": len(found)})


def _notes_list(call: ToolCall) -> ToolResult:
    limit = call.arguments.get("limit", 20)
    found = [_note(note) for note in Note.objects.filter(agent=call.agent)[:limit]]
    return ToolResult(data={"notes": found}, meta={"count": len(found)})


def _limit(maximum: int, default: int) -> dict[str, object]:
    return {"type": "integer", "minimum": 1, "maximum": maximum, "default": default}


BUILTIN_TOOLS = [
    Tool(
        name="time.now",
        description="The current date and time in the owner's time zone.",
        parameters={"type": "object", "properties": {}, "additionalProperties": False},
        perform=_time_now,
    ),
    Tool(
        name="notes.save",
        description="Save a short note in the agent's notebook, to find it again later.",
        parameters={
            "type": "object",
            "properties": {
                "text": {"type": "string", "minLength": 1, "maxLength": Note.MAX_TEXT_CHARS}
            },
            "required": ["text"],
            "additionalProperties": False,
        },
        perform=_notes_save,
    ),
    Tool(
        name="notes.search",
        description="Find notes containing some text (case-insensitive), newest first.",
        parameters={
            "type": "object",
            "properties": {
                "query": {"type": "string", "minLength": 1, "maxLength": 200},
                "limit": _limit(50, 10),
            },
            "required": ["query"],
            "additionalProperties": False,
        },
        perform=_notes_search,
    ),
    Tool(
        name="notes.list",
        description="The most recent notes, newest first.",
        parameters={
            "type": "object",
            "properties": {"limit": _limit(50, 20)},
            "additionalProperties": False,
        },
        perform=_notes_list,
    ),
]


def register_builtin_tools() -> None:
    for tool in BUILTIN_TOOLS:
        register(tool)
