"""Only what the gateway understands goes upstream (issue 10, item 1).

Each provider's endpoint accepts the body fields of its allow-list (and only
some values where a value changes price or reach); anything else is refused
with a 400 in the provider's shape naming the field. Client headers are not
forwarded. Tools off the agent's allow-list are dropped from what the model
sees, and an answer that calls a tool that was not offered is refused.
"""

from __future__ import annotations

import re

import anthropic
import httpx
import openai
import pytest

from gateway.models import UsageStatus
from gateway.provider_standin import Reply
from gateway.tests.helpers import (
    MESSAGES,
    anthropic_client,
    claude_tool,
    function_tool,
    only_record,
    openai_client,
)

# What a stock OpenClaw turn declares (MACHINE-NOTES.md).
OPENCLAW_TOOLS = [
    "apply_patch", "edit", "exec", "ls", "openclaw", "process", "read",
    "sessions_yield", "tool_call", "tool_describe", "tool_search", "write",
]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"functions": [{"name": "lookup", "parameters": {}}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"service_tier": "priority"}, "service_tier"),
        ({"n": 3}, "n"),
        ({"store": True}, "store"),
        ({"some_future_field": 1}, "some_future_field"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_openai_fields_off_the_allow_list_are_refused_by_name(
    gateway, fake_providers, make_agent, extra, field
):
    bot = make_agent(allowed_tools=["lookup"])
    with pytest.raises(openai.BadRequestError) as excinfo:
        openai_client(gateway, bot.token).chat.completions.create(
            model="gpt-test", messages=MESSAGES, extra_body=extra
        )
    assert f"'{field}'" in excinfo.value.body["message"]
    assert excinfo.value.body["param"] == field
    assert fake_providers.requests == []


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (
            [{"type": "image_url", "image_url": {"url": "https://attacker.example/x.png"}}],
            "messages[0].content[0].type",
        ),
        ([{"type": "file", "file": {"file_id": "file-abc"}}], "messages[0].content[0].type"),
        (
            [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}],
            "messages[0].content[0].type",
        ),
    ],
    ids=["image-url", "file", "audio"],
)
def test_openai_content_the_body_does_not_bound_is_refused(
    gateway, fake_providers, make_agent, content, field
):
    bot = make_agent()
    with pytest.raises(openai.BadRequestError, match=re.escape(f"'{field}'")):
        openai_client(gateway, bot.token).chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": content}]
        )
    assert fake_providers.requests == []


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        (
            {"mcp_servers": [{"type": "url", "url": "https://attacker.example/mcp", "name": "x"}]},
            "mcp_servers",
        ),
        ({"container": "container_1"}, "container"),
        ({"service_tier": "auto"}, "service_tier"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "computer_20250124", "name": "computer"}]}, "tools[0].type"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "document",
                                "source": {"type": "url", "url": "https://a.example/x.pdf"},
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0].type",
        ),
    ],
    ids=["mcp", "container", "tier", "web-search", "computer-use", "pdf-url"],
)
def test_anthropic_fields_off_the_allow_list_are_refused_by_name(
    gateway, fake_providers, make_agent, extra, field
):
    bot = make_agent("anthropic")
    body = {"model": "claude-test", "max_tokens": 100, "messages": MESSAGES, **extra}
    response = httpx.post(
        f"{gateway}/gateway/anthropic/v1/messages",
        json=body,
        headers={"x-api-key": bot.token, "anthropic-version": "2023-06-01"},
    )
    assert response.status_code == 400
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert f"'{field}'" in response.json()["error"]["message"]
    assert fake_providers.requests == []


def test_anthropic_betas_are_refused_unless_allow_listed(gateway, fake_providers, make_agent):
    bot = make_agent("anthropic")
    client = anthropic_client(gateway, bot.token)
    with pytest.raises(anthropic.BadRequestError, match="mcp-client-2025-04-04"):
        client.messages.create(
            model="claude-test",
            max_tokens=100,
            messages=MESSAGES,
            extra_headers={"anthropic-beta": "mcp-client-2025-04-04"},
        )
    assert fake_providers.requests == []
    client.messages.create(
        model="claude-test",
        max_tokens=100,
        messages=MESSAGES,
        extra_headers={
            "anthropic-beta": "interleaved-thinking-2025-05-14",
            "anthropic-version": "2099-01-01",
            "x-custom": "leak",
        },
    )
    sent = fake_providers.requests[-1].headers
    assert sent["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert sent["anthropic-version"] == "2023-06-01"  # ours, not the client's
    assert "x-custom" not in sent
    assert fake_providers.requests[-1].json["service_tier"] == "standard_only"


def test_only_headers_we_set_reach_openai(gateway, fake_providers, make_agent):
    bot = make_agent()
    openai_client(
        gateway,
        bot.token,
        default_headers={"OpenAI-Organization": "org-other", "X-Forward-Me": "no"},
    ).chat.completions.create(model="gpt-test", messages=MESSAGES)
    sent = fake_providers.requests[-1]
    assert set(sent.headers) <= {"host", "authorization", "content-type", "content-length"}
    assert sent.json["service_tier"] == "default"


def test_tools_off_the_allow_list_are_dropped_and_recorded(gateway, fake_providers, make_agent):
    bot = make_agent(allowed_tools=["calendar.list_events"])
    tools = [function_tool(name) for name in [*OPENCLAW_TOOLS, "calendar__list_events"]]
    openai_client(gateway, bot.token).chat.completions.create(
        model="gpt-test", messages=MESSAGES, tools=tools, tool_choice="auto"
    )
    sent = fake_providers.requests[-1].json
    assert [tool["function"]["name"] for tool in sent["tools"]] == ["calendar__list_events"]
    assert sent["parallel_tool_calls"] is False  # at most one tool call, and it is reserved
    record = only_record(bot.agent)
    assert record.dropped_tools == OPENCLAW_TOOLS
    assert record.reserved_tool_calls == 1


def test_when_every_tool_is_dropped_the_model_sees_none(gateway, fake_providers, make_agent):
    bot = make_agent("anthropic", allowed_tools=[])
    anthropic_client(gateway, bot.token).messages.create(
        model="claude-test",
        max_tokens=100,
        messages=MESSAGES,
        tools=[claude_tool(name) for name in OPENCLAW_TOOLS],
        tool_choice={"type": "any"},
    )
    sent = fake_providers.requests[-1].json
    assert "tools" not in sent
    assert "tool_choice" not in sent
    assert only_record(bot.agent).reserved_tool_calls == 0


def test_anthropic_parallel_tool_use_is_disabled_upstream(gateway, fake_providers, make_agent):
    bot = make_agent("anthropic", allowed_tools=["gmail.search"])
    anthropic_client(gateway, bot.token).messages.create(
        model="claude-test",
        max_tokens=100,
        messages=MESSAGES,
        tools=[claude_tool("gmail__search")],
    )
    sent = fake_providers.requests[-1].json
    assert sent["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


def test_openai_answer_calling_a_tool_not_offered_is_refused(gateway, fake_providers, make_agent):
    bot = make_agent(allowed_tools=["lookup"])
    fake_providers.enqueue(Reply(tool_calls=[("exec", {"cmd": "curl attacker"})], output_tokens=20))
    with pytest.raises(openai.APIStatusError, match="'exec'") as excinfo:
        openai_client(gateway, bot.token).chat.completions.create(
            model="gpt-test", messages=MESSAGES, tools=[function_tool("lookup")]
        )
    assert excinfo.value.status_code == 502
    record = only_record(bot.agent)
    assert record.status == UsageStatus.REFUSED_RESPONSE
    assert (record.tool_calls, record.tool_names) == (0, ["exec"])
    assert record.output_tokens == 20  # what the provider billed is still charged


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_streamed_tool_call_not_offered_ends_the_stream_in_an_error(
    gateway, fake_providers, make_agent, provider
):
    bot = make_agent(provider, allowed_tools=["lookup"])
    fake_providers.enqueue(
        Reply(text="ok", tool_calls=[("shell", {"cmd": "id"})], input_tokens=30, output_tokens=25)
    )
    if provider == "openai":
        stream = openai_client(gateway, bot.token).chat.completions.create(
            model="gpt-test", messages=MESSAGES, tools=[function_tool("lookup")], stream=True
        )
    else:
        stream = anthropic_client(gateway, bot.token).messages.create(
            model="claude-test",
            max_tokens=100,
            messages=MESSAGES,
            tools=[claude_tool("lookup")],
            stream=True,
        )
    received: list = []
    with pytest.raises((openai.APIError, anthropic.APIError), match="'shell'"):
        received.extend(stream)
    assert "shell" not in repr(received)  # the tool call never reached the agent
    record = only_record(bot.agent)
    assert record.status == UsageStatus.REFUSED_RESPONSE
    # The stream was read to its end upstream: charged the provider's own usage.
    assert (record.output_tokens, record.charged_reservation, record.tool_calls) == (25, False, 0)
