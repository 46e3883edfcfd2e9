"""The fake providers speak OpenAI's and Anthropic's real wire formats.

Each test calls the fake directly with the official SDK (no gateway in between): what
the SDK parses, with its response validation made strict, is what it would have parsed
from the real provider. The gateway's own tests can then trust the fake.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator

import anthropic
import httpx
import httpx2
import openai
import pytest

from gateway.provider_standin import Reply
from gateway.tests.fake_providers import FakeProviders

MESSAGES = [{"role": "user", "content": "Say hello."}]
# A name the SDK knows nothing of: it warns about the ones it knows to be deprecated.
CLAUDE = "claude-test-model"
OPENAI_KEY = "sk-test-openai-key"
ANTHROPIC_KEY = "sk-ant-test-key"
WEATHER = ("get_weather", {"city": "Paris", "units": "celsius", "days": [1, 2, 3]})
CLOCK = ("get_time", {"zone": "Europe/Paris"})


@pytest.fixture
def openai_client(fake_providers: FakeProviders) -> Iterator[openai.OpenAI]:
    # Strict validation: a field of the wrong type or shape fails the test instead of
    # being let through, as the SDKs' own tests do.
    with openai.OpenAI(
        base_url=fake_providers.openai_base,
        api_key=OPENAI_KEY,
        max_retries=0,
        timeout=10,
        _strict_response_validation=True,
    ) as client:
        yield client


@pytest.fixture
def anthropic_client(fake_providers: FakeProviders) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=fake_providers.anthropic_base,
        api_key=ANTHROPIC_KEY,
        max_retries=0,
        timeout=10,
        _strict_response_validation=True,
    ) as client:
        yield client


def _openai_stream(client: openai.OpenAI, **extra):
    return client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, **extra
    )


def _anthropic_create(client: anthropic.Anthropic, **extra):
    return client.messages.create(model=CLAUDE, max_tokens=256, messages=MESSAGES, **extra)


def _drain(stream: Iterable, *, into: list) -> None:
    """Read a stream to its end (or its error), keeping what arrived before."""
    into.extend(stream)


# --- OpenAI ------------------------------------------------------------------------------


def test_openai_completion_reports_the_scripted_text_and_usage(fake_providers, openai_client):
    fake_providers.enqueue(
        Reply(
            text="Hi there, friend.", input_tokens=1200, cached_input_tokens=1024, output_tokens=7
        )
    )

    raw = openai_client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    completion = raw.parse()

    assert raw.headers["x-request-id"].startswith("req_")
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "gpt-4o-mini"
    assert completion.choices[0].message.content == "Hi there, friend."
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (1200, 7, 1207)
    assert usage.prompt_tokens_details.cached_tokens == 1024
    [request] = fake_providers.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert request.json["messages"] == MESSAGES


def test_openai_stream_ends_with_a_usage_chunk_when_asked(fake_providers, openai_client):
    reply = Reply(text="one two three four five six", input_tokens=50, cached_input_tokens=10)
    fake_providers.enqueue(reply)

    chunks = list(_openai_stream(openai_client, stream_options={"include_usage": True}))

    content = [c.choices[0].delta.content for c in chunks if c.choices]
    assert "".join(piece or "" for piece in content) == reply.text
    assert len([piece for piece in content if piece]) == 6  # one event per word
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert [f for f in finishes if f] == ["stop"]
    *body, last = chunks
    assert last.choices == []
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (50, reply.output_tokens)
    assert last.usage.prompt_tokens_details.cached_tokens == 10
    assert all(chunk.usage is None for chunk in body)
    assert len({chunk.id for chunk in chunks}) == 1


def test_openai_stream_has_no_usage_unless_asked(fake_providers, openai_client):
    chunks = list(_openai_stream(openai_client))

    assert len(chunks) > 5
    assert all(chunk.choices and chunk.usage is None for chunk in chunks)


def test_openai_tool_calls_are_parsed_by_the_sdk(fake_providers, openai_client):
    fake_providers.enqueue(Reply(text="", tool_calls=[WEATHER, CLOCK]))

    message = (
        openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        .choices[0]
        .message
    )

    assert message.content is None
    calls = [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls]
    assert calls == [WEATHER, CLOCK]
    assert all(call.id.startswith("call_") for call in message.tool_calls)


def test_openai_streamed_tool_call_fragments_add_up(fake_providers, openai_client):
    fake_providers.enqueue(Reply(text="Checking.", tool_calls=[WEATHER, CLOCK], output_tokens=40))

    with openai_client.chat.completions.stream(
        model="gpt-4o-mini", messages=MESSAGES, stream_options={"include_usage": True}
    ) as stream:
        completion = stream.get_final_completion()

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking."
    calls = [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls]
    assert calls == [WEATHER, CLOCK]
    assert completion.usage.completion_tokens == 40


def test_openai_stream_is_sse_framed_and_ends_with_done(fake_providers):
    with httpx.stream(
        "POST",
        f"{fake_providers.openai_base}/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
        headers={"Authorization": f"Bearer {OPENAI_KEY}"},
    ) as response:
        body = response.read().decode()

    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.headers["x-request-id"].startswith("req_")
    *events, done, tail = body.split("\n\n")
    assert (done, tail) == ("data: [DONE]", "")
    for event in events:
        assert event.startswith("data: ")
        assert json.loads(event.removeprefix("data: "))["object"] == "chat.completion.chunk"


# --- Anthropic ---------------------------------------------------------------------------


def test_anthropic_message_reports_the_scripted_text_and_usage(fake_providers, anthropic_client):
    fake_providers.enqueue(
        Reply(
            text="Bonjour !",
            input_tokens=30,
            cached_input_tokens=2000,
            cache_creation_input_tokens=500,
            output_tokens=4,
        )
    )

    raw = anthropic_client.messages.with_raw_response.create(
        model=CLAUDE, max_tokens=256, messages=MESSAGES
    )
    message = raw.parse()

    assert raw.headers["request-id"].startswith("req_")
    assert message.id.startswith("msg_")
    assert message.model == CLAUDE
    assert [block.text for block in message.content] == ["Bonjour !"]
    assert message.stop_reason == "end_turn"
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (30, 4)
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (2000, 500)
    [request] = fake_providers.requests
    assert (request.method, request.path) == ("POST", "/v1/messages")
    # The SDK (2.x) sends the API key as a bearer token; the API also takes x-api-key.
    assert request.headers["authorization"] == f"Bearer {ANTHROPIC_KEY}"
    assert request.headers["anthropic-version"]
    assert request.json["max_tokens"] == 256


def test_anthropic_stream_final_message_carries_the_scripted_usage(
    fake_providers, anthropic_client
):
    reply = Reply(
        text="A short streamed answer in seven words.",
        input_tokens=80,
        cached_input_tokens=1500,
        cache_creation_input_tokens=300,
        output_tokens=9,
    )
    fake_providers.enqueue(reply)

    with anthropic_client.messages.stream(
        model=CLAUDE, max_tokens=256, messages=MESSAGES
    ) as stream:
        text = "".join(stream.text_stream)
        message = stream.get_final_message()

    assert text == reply.text
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (80, 9)
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (1500, 300)
    assert message.stop_reason == "end_turn"


def test_anthropic_stream_is_sse_framed_in_the_documented_order(fake_providers):
    fake_providers.enqueue(Reply(text="Two words", tool_calls=[CLOCK], output_tokens=21))

    with httpx.stream(
        "POST",
        f"{fake_providers.anthropic_base}/v1/messages",
        json={"model": CLAUDE, "max_tokens": 64, "messages": MESSAGES, "stream": True},
        headers={"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"},
    ) as response:
        body = response.read().decode()

    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["request-id"].startswith("req_")
    *frames, tail = body.split("\n\n")
    assert tail == ""
    events = []
    for frame in frames:
        name_line, data_line = frame.split("\n")
        name, data = name_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name
        events.append(data)
    names = [name for name, _ in itertools.groupby(event["type"] for event in events)]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    fragments = [e["delta"]["partial_json"] for e in events if e.get("index") == 1 and "delta" in e]
    assert fragments[0] == ""
    assert json.loads("".join(fragments)) == CLOCK[1]
    assert events[0]["message"]["usage"]["output_tokens"] == 1
    assert events[-2]["usage"] == {"output_tokens": 21}
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_anthropic_tool_use_blocks_are_parsed_by_the_sdk(fake_providers, anthropic_client):
    fake_providers.enqueue(Reply(text="", tool_calls=[WEATHER, CLOCK]))

    message = _anthropic_create(anthropic_client)

    assert message.stop_reason == "tool_use"
    assert [(block.name, block.input) for block in message.content] == [WEATHER, CLOCK]
    assert all(block.id.startswith("toolu_") for block in message.content)


def test_anthropic_streamed_tool_input_fragments_add_up(fake_providers, anthropic_client):
    fake_providers.enqueue(Reply(text="Let me look.", tool_calls=[WEATHER, CLOCK]))

    with anthropic_client.messages.stream(
        model=CLAUDE, max_tokens=256, messages=MESSAGES
    ) as stream:
        message = stream.get_final_message()

    text, *tools = message.content
    assert text.text == "Let me look."
    assert [(block.type, block.name, block.input) for block in tools] == [
        ("tool_use", *WEATHER),
        ("tool_use", *CLOCK),
    ]
    assert message.stop_reason == "tool_use"


# --- errors, refusals and faults ---------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("status", "exception", "kind", "code"),
    [
        (400, openai.BadRequestError, "invalid_request_error", None),
        (401, openai.AuthenticationError, "invalid_request_error", "invalid_api_key"),
        (429, openai.RateLimitError, "requests", "rate_limit_exceeded"),
        (500, openai.InternalServerError, "server_error", None),
        (503, openai.InternalServerError, "server_error", None),
    ],
)
def test_openai_errors_raise_the_sdks_typed_exceptions(
    fake_providers, openai_client, stream, status, exception, kind, code
):
    fake_providers.enqueue(Reply(status=status, error_message="scripted failure"))

    with pytest.raises(exception) as raised:
        openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=stream)

    error = raised.value
    assert error.status_code == status
    assert error.body == {"message": "scripted failure", "type": kind, "param": None, "code": code}
    assert error.response.headers["x-request-id"].startswith("req_")


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("status", "exception", "kind"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (401, anthropic.AuthenticationError, "authentication_error"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
def test_anthropic_errors_raise_the_sdks_typed_exceptions(
    fake_providers, anthropic_client, stream, status, exception, kind
):
    fake_providers.enqueue(Reply(status=status))

    with pytest.raises(exception) as raised:
        _anthropic_create(anthropic_client, stream=stream)

    error = raised.value
    assert error.status_code == status
    assert error.body["type"] == "error"
    assert error.body["error"]["type"] == kind
    assert error.body["error"]["message"]
    assert error.request_id == error.body["request_id"]
    assert error.request_id.startswith("req_")


def test_echo_credentials_puts_the_received_key_in_the_error(
    fake_providers, openai_client, anthropic_client
):
    fake_providers.enqueue(Reply(status=401, echo_credentials=True))
    fake_providers.enqueue(Reply(status=400, echo_credentials=True))

    with pytest.raises(openai.AuthenticationError) as from_openai:
        openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    with pytest.raises(anthropic.BadRequestError) as from_anthropic:
        _anthropic_create(anthropic_client)

    assert OPENAI_KEY in from_openai.value.body["message"]
    assert ANTHROPIC_KEY in from_anthropic.value.body["error"]["message"]


def test_echo_credentials_puts_the_received_key_in_a_successful_reply(
    fake_providers, anthropic_client
):
    fake_providers.enqueue(Reply(text="Your key is", echo_credentials=True))

    message = _anthropic_create(anthropic_client)

    assert message.content[0].text == f"Your key is {ANTHROPIC_KEY}"


def test_requests_without_credentials_are_refused_and_keep_the_queue(fake_providers, openai_client):
    fake_providers.enqueue(Reply(text="Still queued."))
    base = fake_providers.base_url
    chat = {"model": "gpt-4o-mini", "messages": MESSAGES}
    message = {**chat, "max_tokens": 16}

    no_openai_key = httpx.post(f"{base}/v1/chat/completions", json=chat)
    no_anthropic_key = httpx.post(
        f"{base}/v1/messages", json=message, headers={"anthropic-version": "2023-06-01"}
    )
    no_version = httpx.post(f"{base}/v1/messages", json=message, headers={"x-api-key": "k"})
    no_max_tokens = httpx.post(
        f"{base}/v1/messages", json=chat, headers={"x-api-key": "k", "anthropic-version": "1"}
    )

    assert no_openai_key.status_code == 401
    assert no_openai_key.json()["error"]["type"] == "invalid_request_error"
    assert no_anthropic_key.status_code == 401
    assert no_anthropic_key.json()["error"]["type"] == "authentication_error"
    assert no_version.status_code == 400
    assert no_max_tokens.status_code == 400
    assert no_max_tokens.json()["error"]["message"] == "max_tokens: Field required"
    assert len(fake_providers.requests) == 4
    completion = openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert completion.choices[0].message.content == "Still queued."


def test_malformed_openai_frame_fails_the_sdk_stream(fake_providers, openai_client):
    fake_providers.enqueue(Reply(malformed_after_chunks=3))
    received: list = []

    with pytest.raises(json.JSONDecodeError):
        _drain(_openai_stream(openai_client), into=received)

    assert len(received) == 3


def test_malformed_anthropic_frame_fails_the_sdk_stream(fake_providers, anthropic_client):
    fake_providers.enqueue(Reply(malformed_after_chunks=3))
    received: list = []

    with pytest.raises(json.JSONDecodeError):
        _drain(_anthropic_create(anthropic_client, stream=True), into=received)

    # The third event sent was the ping, which the SDK swallows.
    assert [event.type for event in received] == ["message_start", "content_block_start"]


def test_openai_disconnect_mid_stream_is_a_connection_error(fake_providers, openai_client):
    fake_providers.enqueue(Reply(disconnect_after_chunks=4))
    received: list = []

    with pytest.raises(openai.APIConnectionError):
        _drain(_openai_stream(openai_client, stream_options={"include_usage": True}), into=received)

    assert len(received) == 4
    assert all(chunk.usage is None for chunk in received)


def test_anthropic_disconnect_mid_stream_breaks_the_sdk_stream(fake_providers, anthropic_client):
    fake_providers.enqueue(Reply(disconnect_after_chunks=4))

    # The Anthropic SDK lets its HTTP client's error through while streaming.
    with (
        pytest.raises(httpx2.RemoteProtocolError),
        anthropic_client.messages.stream(model=CLAUDE, max_tokens=256, messages=MESSAGES) as stream,
    ):
        stream.get_final_message()


@pytest.mark.parametrize(
    ("fault", "exception"),
    [("malformed_after_chunks", json.JSONDecodeError), ("disconnect_after_chunks", None)],
)
def test_broken_json_bodies_fail_the_sdk_call(
    fake_providers, openai_client, anthropic_client, fault, exception
):
    fake_providers.enqueue(Reply(**{fault: 0}), Reply(**{fault: 0}))

    with pytest.raises(exception or openai.APIConnectionError):
        openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    with pytest.raises(exception or anthropic.APIConnectionError):
        _anthropic_create(anthropic_client)


def test_slow_headers_trip_the_sdk_timeouts(fake_providers):
    fake_providers.enqueue(Reply(delay_before_headers_s=30), Reply(delay_before_headers_s=30))
    hasty_openai = openai.OpenAI(
        base_url=fake_providers.openai_base, api_key=OPENAI_KEY, max_retries=0, timeout=0.2
    )
    hasty_anthropic = anthropic.Anthropic(
        base_url=fake_providers.anthropic_base, api_key=ANTHROPIC_KEY, max_retries=0, timeout=0.2
    )

    with pytest.raises(openai.APITimeoutError):
        hasty_openai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    with pytest.raises(anthropic.APITimeoutError):
        _anthropic_create(hasty_anthropic)


def test_stream_events_are_flushed_one_by_one(fake_providers):
    # 16 events, 0.1 s apart, read with a 1.2 s read timeout: the stream only completes
    # if each event is written and flushed as it goes, not buffered to the end.
    reply = Reply(
        text="one two three four five six seven eight nine ten eleven twelve", chunk_delay_s=0.1
    )
    fake_providers.enqueue(reply)
    client = openai.OpenAI(
        base_url=fake_providers.openai_base,
        api_key=OPENAI_KEY,
        max_retries=0,
        timeout=openai.Timeout(10.0, read=1.2),
    )

    chunks = list(_openai_stream(client, stream_options={"include_usage": True}))

    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.text
    assert chunks[-1].usage.completion_tokens == reply.output_tokens
