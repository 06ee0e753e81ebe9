"""A fake Ollama server that speaks the wire protocol of Ollama v0.24.0.

Integration tests use the real Ollama. This fake exists for what a real one cannot do on demand:
answer instantly, slowly, with 503/500/404, with 64 MiB, with NUL bytes or lone surrogates, never,
or by dropping the connection half-way. Benchmarks use it so they measure the worker, not the model.

What is byte-compatible with v0.24.0 (read from ``api/types.go`` and ``server/routes.go``):

* ``GET|HEAD /`` -> ``Ollama is running`` (text/plain), ``GET|HEAD /api/version``, ``GET /api/tags``,
  ``POST /api/show``, ``POST /api/chat`` streamed (``application/x-ndjson``, one JSON object a line)
  or not (``"stream": false``, one JSON object).
* Field order of ``api.ChatResponse``: ``model, created_at, message{role, content}, done,
  done_reason, total_duration, load_duration, prompt_eval_count, prompt_eval_duration, eval_count,
  eval_duration``; zero metrics are omitted (Go ``omitempty``).
* JSON is escaped the way Go's ``encoding/json`` does: ``<``, ``>``, ``&``, U+2028 and U+2029 as
  ``\\u`` escapes, other non-ASCII as raw UTF-8, ``\\b \\f \\n \\r \\t`` short, other controls
  ``\\u00xx``. Timestamps are RFC 3339 with nanoseconds (trailing zeros cut), in UTC.
* Errors are ``{"error": "..."}``: unknown model 404 ``model 'x' not found``, busy 503
  ``server busy, please try again.  maximum pending requests exceeded``, bad JSON 400.

Not what real Ollama does: ``surrogate`` answers carry a ``\\ud800`` escape (Go would write
``\\ufffd``); it is there to test the worker against any JSON a server may legally send.

Behaviour is set per server (:class:`Behaviour`) and can be overridden per request by a marker in
the last user message, e.g. ``[[fake:delay_ms=200,nul]]`` (comma-separated ``key=value`` or bare
boolean keys; ``answer`` values cannot contain ``,`` or ``]``). Control endpoints for a fake running
as its own process: ``GET /_fake/counts``, ``POST /_fake/behaviour`` (fields to change),
``POST /_fake/reset``.

Run as a process: ``python -m procos_testkit.fake_ollama --port 11435 --delay-ms 50``. The server
machinery and Go's wire conventions (JSON escaping, chunking) are in ``procos_testkit.httpkit``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import select
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from procos_testkit.httpkit import (
    JSON_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    BackgroundServer,
    TrackedHandler,
    chunk,
    go_json,
    go_time,
)

__all__ = [
    "BUSY_MESSAGE",
    "DEFAULT_MODELS",
    "OLLAMA_VERSION",
    "Behaviour",
    "FakeOllama",
    "generated_answer_chunks",
    "main",
]

OLLAMA_VERSION = "0.24.0"
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
DEFAULT_MODELS: tuple[str, ...] = ("smollm2:135m", "fake:latest")
# A realistic 500 from Ollama: the runner died under the request.
_SERVER_ERROR_MESSAGE = "llama runner process has terminated: exit status 2"
_GENERATED_PIECE_BYTES = 64 * 1024
_TEXT_STREAM_PIECE_CHARS = 64
_MARKER_RE = re.compile(r"\[\[fake:([^\]]*)\]\]")
_NDJSON_CT = "application/x-ndjson"
_FILLER = (b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor " * 1000)[
    :_GENERATED_PIECE_BYTES
]


def generated_answer_chunks(total_bytes: int, piece_bytes: int = _GENERATED_PIECE_BYTES) -> Iterator[bytes]:
    """The ``answer_bytes`` answer: ``total_bytes`` of JSON-safe ASCII, yielded piece by piece.

    Each piece starts with its index so a reordered or repeated piece changes the checksum.
    """
    index = 0
    remaining = total_bytes
    while remaining > 0:
        size = min(piece_bytes, remaining)
        head = b"%010d " % index
        piece = (head + _FILLER)[:size] if size > len(head) else head[:size]
        if len(piece) < size:  # piece_bytes larger than the filler: pad with spaces
            piece += b" " * (size - len(piece))
        yield piece
        remaining -= size
        index += 1


_INT_FIELDS = frozenset({"delay_ms", "chunk_delay_ms", "answer_bytes", "chunk_chars", "status", "fail_first_n"})
_BOOL_FIELDS = frozenset({"nul", "surrogate", "hang", "drop"})
_STR_FIELDS = frozenset({"answer", "done_reason"})
# 408 and 429 are what a rate-limiting or timing-out proxy in front of Ollama answers.
_STATUSES = (404, 408, 429, 500, 503)
_PROXY_MESSAGES = {408: "proxy: request timeout", 429: "proxy: too many requests"}
_TRUE = frozenset({"", "1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How the fake answers ``/api/chat``.

    Order of effects: ``delay_ms``, then ``fail_first_n`` / ``status`` errors, then ``hang``, then
    the answer (``drop`` cuts it half-way). ``answer`` wins over the default echo answer;
    ``answer_bytes`` wins over both. ``nul``/``surrogate`` apply to text answers only.
    """

    delay_ms: int = 0
    """Latency before anything is sent (errors included)."""
    chunk_delay_ms: int = 0
    """Pause between streamed chunks (a slow generation)."""
    answer: str | None = None
    """Fixed answer text; None answers with an echo of the prompt."""
    answer_bytes: int | None = None
    """Generated ASCII answer of exactly this many bytes, written in pieces."""
    chunk_chars: int = 0
    """Content characters per streamed chunk; 0 picks 64 for text, 64 KiB for generated answers."""
    status: int | None = None
    """Answer every chat with this error status (404, 500 or 503; 408 or 429 as a proxy in front of Ollama would)."""
    fail_first_n: int = 0
    """The first N chats (per prompt when set by marker) get 503, later ones succeed."""
    nul: bool = False
    """Put a NUL character in the middle of the answer."""
    surrogate: bool = False
    """Put a lone surrogate (``\\ud800`` escape) in the middle of the answer."""
    hang: bool = False
    """Send nothing until the client goes away or the server stops."""
    drop: bool = False
    """Close the connection half-way through the response body."""
    done_reason: str = "stop"
    """``stop`` or ``length``."""

    def __post_init__(self) -> None:
        if self.status not in (None, *_STATUSES):
            raise ValueError(f"status must be one of {_STATUSES}, not {self.status}")
        for name in ("delay_ms", "chunk_delay_ms", "chunk_chars", "fail_first_n"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.answer_bytes is not None and self.answer_bytes < 0:
            raise ValueError("answer_bytes must be >= 0")

    def with_marker(self, text: str) -> Behaviour:
        """This behaviour overridden by every ``[[fake:...]]`` marker found in ``text``."""
        changes: dict[str, Any] = {}
        for match in _MARKER_RE.finditer(text):
            for item in match.group(1).split(","):
                key, _, value = item.strip().partition("=")
                if key:
                    changes[key] = _parse_value(key, value.strip())
        return dataclasses.replace(self, **changes) if changes else self

    def changed(self, fields: dict[str, Any]) -> Behaviour:
        """This behaviour with ``fields`` (JSON-typed values, as from a control request) changed."""
        unknown = set(fields) - _INT_FIELDS - _BOOL_FIELDS - _STR_FIELDS
        if unknown:
            raise ValueError(f"unknown behaviour field(s): {sorted(unknown)}")
        return dataclasses.replace(self, **fields)


def _parse_value(key: str, value: str) -> Any:
    if key in _BOOL_FIELDS:
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
    elif key in _INT_FIELDS:
        try:
            return int(value)
        except ValueError:
            pass
    elif key in _STR_FIELDS:
        return value
    else:
        raise ValueError(f"fake: unknown behaviour key {key!r}")
    raise ValueError(f"fake: bad value {value!r} for {key!r}")



class _Aborted(Exception):
    """The response was cut on purpose or the client went away."""


class FakeOllama(BackgroundServer):
    """A fake Ollama v0.24.0 on 127.0.0.1 (see the module docstring).

    Usage::

        with FakeOllama(behaviour=Behaviour(delay_ms=50)) as fake:
            ollama.Client(host=fake.base_url).chat(model="smollm2:135m", messages=[...])
            assert fake.chat_calls == 1
    """

    def __init__(
        self,
        port: int = 0,
        behaviour: Behaviour | None = None,
        models: Sequence[str] = DEFAULT_MODELS,
        max_in_flight: int = 0,
        context_length: int = 8192,
    ) -> None:
        """``max_in_flight`` > 0 answers 503 busy to chats beyond that many at once (Ollama's queue);
        ``context_length`` is the context ``/api/show`` says the model was trained for (the worker's window
        is capped at it: a test that sends a prompt of megabytes raises it, with a ``num_ctx`` to match)."""
        super().__init__(port)
        self.context_length = context_length
        self._behaviour = behaviour or Behaviour()
        self.models: tuple[str, ...] = tuple(_full_name(m) for m in models)
        self.max_in_flight = max_in_flight
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._failures: Counter[str] = Counter()
        self._in_flight = 0
        self._started_ns = time.time_ns()

    @property
    def behaviour(self) -> Behaviour:
        return self._behaviour

    def set_behaviour(self, behaviour: Behaviour | None = None, **changes: Any) -> Behaviour:
        """Replace the behaviour (``behaviour``) and/or change some of its fields; returns the new one.

        Also restarts the ``fail_first_n`` count.
        """
        new = (behaviour or self._behaviour).changed(changes)
        with self._lock:
            self._behaviour = new
            self._failures.clear()
        return new

    @property
    def chat_calls(self) -> int:
        """How many ``POST /api/chat`` requests arrived (whatever their outcome)."""
        return self.count("/api/chat")

    def count(self, path: str) -> int:
        with self._lock:
            return self._counts[path]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset_counts(self) -> None:
        with self._lock:
            self._counts.clear()
            self._failures.clear()

    def _record(self, path: str) -> None:
        with self._lock:
            self._counts[path] += 1

    def _should_fail(self, key: str, first_n: int) -> bool:
        with self._lock:
            if self._failures[key] < first_n:
                self._failures[key] += 1
                return True
            return False

    def _enter(self) -> bool:
        with self._lock:
            if self.max_in_flight and self._in_flight >= self.max_in_flight:
                return False
            self._in_flight += 1
            return True

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _tags_body(self) -> bytes:
        modified = go_time(self._started_ns)
        return go_json(
            {
                "models": [
                    {
                        "name": m,
                        "model": m,
                        "modified_at": modified,
                        "size": 100_000_000,
                        "digest": hashlib.sha256(m.encode()).hexdigest(),
                        "details": _DETAILS,
                    }
                    for m in self.models
                ]
            }
        )

    def _show_body(self) -> bytes:
        return go_json(
            {
                "modelfile": "# Modelfile generated by procos_testkit.fake_ollama\nFROM fake\n",
                "parameters": 'stop                           "<|im_start|>"\n'
                'stop                           "<|im_end|>"',
                "template": "{{ .Prompt }}",
                "details": _DETAILS,
                "model_info": {
                    "general.architecture": "llama",
                    "general.parameter_count": 134515008,
                    "llama.context_length": self.context_length,
                },
                "tensors": [{"name": "token_embd.weight", "type": "Q8_0", "shape": [576, 49152]}],
                "capabilities": ["completion"],
                "modified_at": go_time(self._started_ns),
            }
        )


_DETAILS: dict[str, Any] = {
    "parent_model": "",
    "format": "gguf",
    "family": "llama",
    "families": ["llama"],
    "parameter_size": "134.52M",
    "quantization_level": "Q4_1",
}


def _full_name(model: str) -> str:
    # Ollama resolves a name without a tag to ":latest".
    return model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"


def _go_decode_error(body: bytes) -> str:
    """Roughly the message Go's decoder gives for a body that is not a JSON object."""
    stripped = body.lstrip()
    if not stripped:
        return "missing request body"
    first = chr(stripped[0])
    if first not in '{["-0123456789tfn':
        return f"invalid character {first!r} looking for beginning of value"
    return "unexpected EOF"


@dataclass(slots=True)
class _Chat:
    """One parsed chat request and what the fake will answer."""

    model: str
    stream: bool
    behaviour: Behaviour
    prompt_chars: int
    key: str
    text: str  # the answer unless behaviour.answer_bytes is set
    load_only: bool  # no messages: Ollama just loads the model
    started_ns: int


class _FakeHandler(TrackedHandler):
    """Routes requests to the fake's endpoints."""

    @property
    def fake(self) -> FakeOllama:
        return cast(FakeOllama, self.owner)

    def do_HEAD(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/", "/api/version", "/api/tags"):
            self.fake._record(path)
            self.send_body(200, b"", TEXT_CONTENT_TYPE if path == "/" else JSON_CONTENT_TYPE, head_only=True)
        else:
            self.send_body(404, b"404 page not found", TEXT_CONTENT_TYPE)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        fake = self.fake
        if path == "/_fake/counts":
            self.send_body(200, go_json(fake.counts()), JSON_CONTENT_TYPE)
            return
        fake._record(path)
        if path == "/":
            self.send_body(200, b"Ollama is running", TEXT_CONTENT_TYPE)
        elif path == "/api/version":
            self.send_body(200, go_json({"version": OLLAMA_VERSION}), JSON_CONTENT_TYPE)
        elif path == "/api/tags":
            self.send_body(200, fake._tags_body(), JSON_CONTENT_TYPE)
        else:
            self.send_body(404, b"404 page not found", TEXT_CONTENT_TYPE)

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        body = self.read_body()
        if path.startswith("/_fake/"):
            self._control(path, body)
            return
        self.fake._record(path)
        if path == "/api/chat":
            self._chat(body)
        elif path == "/api/show":
            self._show(body)
        else:
            self.send_body(404, b"404 page not found", TEXT_CONTENT_TYPE)

    def _json_object(self, body: bytes, go_type: str) -> dict[str, Any] | None:
        """The body as a JSON object, or None after answering 400 as Ollama would."""
        try:
            req = json.loads(body)
        except ValueError:
            self.send_error_json(400, _go_decode_error(body))
            return None
        if not isinstance(req, dict):
            kind = {list: "array", str: "string", bool: "bool"}.get(type(req), "number")
            self.send_error_json(400, f"json: cannot unmarshal {kind} into Go value of type {go_type}")
            return None
        return req

    def _show(self, body: bytes) -> None:
        req = self._json_object(body, "api.ShowRequest")
        if req is None:
            return
        name = str(req.get("model") or req.get("name") or "").strip()
        if not name:
            self.send_error_json(400, "model is required")
        elif _full_name(name) not in self.fake.models:
            self.send_error_json(404, f"model '{name}' not found")
        else:
            self.send_body(200, self.fake._show_body(), JSON_CONTENT_TYPE)

    def _control(self, path: str, body: bytes) -> None:
        fake = self.fake
        try:
            if path == "/_fake/behaviour":
                fields = json.loads(body or b"{}")
                new = fake.set_behaviour(**fields)
                self.send_body(200, go_json(dataclasses.asdict(new)), JSON_CONTENT_TYPE)
            elif path == "/_fake/reset":
                fake.reset_counts()
                self.send_body(200, b"{}", JSON_CONTENT_TYPE)
            else:
                self.send_body(404, b"404 page not found", TEXT_CONTENT_TYPE)
        except (ValueError, TypeError) as exc:
            self.send_error_json(400, str(exc))

    def _parse_chat(self, body: bytes) -> _Chat | None:
        """The chat request, or None after answering the error Ollama would give."""
        started_ns = time.monotonic_ns()
        req = self._json_object(body, "api.ChatRequest")
        if req is None:
            return None
        model = str(req.get("model") or "").strip()
        messages = req.get("messages") or []
        if not model:
            self.send_error_json(400, "model is required")
            return None
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            self.send_error_json(400, "json: cannot unmarshal into Go struct field ChatRequest.messages")
            return None
        last_user = next((str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), "")
        try:
            behaviour = self.fake.behaviour.with_marker(last_user)
        except (ValueError, TypeError) as exc:
            self.send_error_json(400, str(exc))
            return None
        if _full_name(model) not in self.fake.models and behaviour.status is None:
            self.send_error_json(404, f"model '{model}' not found")
            return None
        marked = _MARKER_RE.search(last_user) is not None
        return _Chat(
            model=model,
            stream=req.get("stream") is not False,  # Ollama streams unless told "stream": false
            behaviour=behaviour,
            prompt_chars=sum(len(str(m.get("content") or "")) for m in messages),
            key=last_user if marked else "",
            text=_answer_text(behaviour, last_user, req.get("format") is not None),
            load_only=not messages,
            started_ns=started_ns,
        )

    def _chat(self, body: bytes) -> None:
        chat = self._parse_chat(body)
        if chat is None:
            return
        if chat.load_only:
            # No messages: Ollama only loads the model and says so, in one object even when streaming.
            loaded = {
                "model": chat.model,
                "created_at": go_time(time.time_ns()),
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": "load",
            }
            self.send_body(200, go_json(loaded), JSON_CONTENT_TYPE)
            return
        # Ollama's queue limit counts waiting requests too, so in-flight covers the delay.
        if not self.fake._enter():
            self.send_error_json(503, BUSY_MESSAGE)
            return
        try:
            self._run_chat(chat)
        except (_Aborted, OSError):
            self.abort()
        finally:
            self.fake._leave()

    def _run_chat(self, chat: _Chat) -> None:
        fake, b = self.fake, chat.behaviour
        if b.delay_ms and fake.stopping.wait(b.delay_ms / 1000):
            raise _Aborted
        refusal = _refusal(chat, fake)
        if refusal is not None:
            self.send_error_json(*refusal)
        elif b.hang:
            self._hang()
        else:
            self._answer(chat)

    def _hang(self) -> None:
        """Say nothing until the client gives up or the server stops."""
        while not self.fake.stopping.is_set():
            readable, _, _ = select.select([self.connection], [], [], 0.2)
            if readable:
                try:
                    if not self.connection.recv(1, socket.MSG_PEEK):
                        break  # the client closed its end
                except OSError:
                    break
        self.abort()

    def _answer(self, chat: _Chat) -> None:
        b = chat.behaviour
        created = go_time(time.time_ns())
        load_ns = max(1, time.monotonic_ns() - chat.started_ns)
        head: dict[str, Any] = {
            "model": chat.model,
            "created_at": created,
            "message": {"role": "assistant", "content": ""},
        }
        # Split the JSON around the (empty) content so the content can be written in pieces.
        open_part, close_part = go_json({**head, "done": False}).split(b'"content":""', 1)
        open_part += b'"content":"'
        close_part = b'"' + close_part
        pieces: Iterator[bytes]
        if b.answer_bytes is not None:
            answer_len = b.answer_bytes
            pieces = generated_answer_chunks(b.answer_bytes, b.chunk_chars or _GENERATED_PIECE_BYTES)
        else:
            answer_len = len(chat.text)
            size = b.chunk_chars or _TEXT_STREAM_PIECE_CHARS
            # Encode each piece as its own JSON string, minus the quotes.
            pieces = (go_json(chat.text[i : i + size])[1:-1] for i in range(0, len(chat.text), size))
        eval_start = time.monotonic_ns()
        if not chat.stream and b.answer_bytes is None and not (b.drop or b.chunk_delay_ms):
            # The common case in one piece: Content-Length when small, as Go sends it.
            content = b"".join(pieces)
            tail = self._final(chat, head, answer_len, load_ns, eval_start)
            self.send_body(200, open_part + content + tail, JSON_CONTENT_TYPE)
            return
        if chat.stream:
            self._stream(chat, open_part, close_part, pieces)
        else:
            self._single(chat, open_part, pieces)
        tail = self._final(chat, head, answer_len, load_ns, eval_start)
        if chat.stream:
            self.wfile.write(chunk(tail + b"\n") + b"0\r\n\r\n")
        else:
            self.wfile.write(chunk(tail) + b"0\r\n\r\n")

    def _final(self, chat: _Chat, head: dict[str, Any], answer_len: int, load_ns: int, eval_start: int) -> bytes:
        """The final object (stream) or the part after the content (non-stream)."""
        now = time.monotonic_ns()
        prompt_tokens = max(1, chat.prompt_chars // 4)
        final = {
            **head,
            "done": True,
            "done_reason": chat.behaviour.done_reason,
            "total_duration": max(1, now - chat.started_ns),
            "load_duration": load_ns,
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": prompt_tokens * 20_000,
            "eval_count": max(1, answer_len // 4),
            "eval_duration": max(1, now - eval_start),
        }
        encoded = go_json(final)
        if chat.stream:
            return encoded
        return b'"' + encoded.split(b'"content":""', 1)[1]

    def _stream(self, chat: _Chat, open_part: bytes, close_part: bytes, pieces: Iterator[bytes]) -> None:
        b = chat.behaviour
        self.wfile.write(self.head_bytes(200, [("Content-Type", _NDJSON_CT), ("Transfer-Encoding", "chunked")]))
        batch: list[bytes] = []
        for n, piece in enumerate(pieces):
            if b.drop and n >= 1:
                self.wfile.write(b"".join(batch))
                raise _Aborted
            batch.append(chunk(open_part + piece + close_part + b"\n"))
            # Small answers go out in one write; big or slow ones chunk by chunk, as Ollama flushes.
            if b.chunk_delay_ms or len(batch) >= 16 or len(piece) > 4096:
                self.wfile.write(b"".join(batch))
                batch.clear()
                if b.chunk_delay_ms and self.fake.stopping.wait(b.chunk_delay_ms / 1000):
                    raise _Aborted
        if b.drop:
            self.wfile.write(b"".join(batch))
            raise _Aborted
        if batch:
            self.wfile.write(b"".join(batch))

    def _single(self, chat: _Chat, open_part: bytes, pieces: Iterator[bytes]) -> None:
        b = chat.behaviour
        head = self.head_bytes(200, [("Content-Type", JSON_CONTENT_TYPE), ("Transfer-Encoding", "chunked")])
        self.wfile.write(head + chunk(open_part))
        for n, piece in enumerate(pieces):
            if b.drop and n >= 1:
                raise _Aborted
            self.wfile.write(chunk(piece))
            if b.chunk_delay_ms and self.fake.stopping.wait(b.chunk_delay_ms / 1000):
                raise _Aborted
        if b.drop:
            raise _Aborted


FakeOllama.handler_class = _FakeHandler


def _refusal(chat: _Chat, fake: FakeOllama) -> tuple[int, str] | None:
    """The error status and message this chat gets instead of an answer, if any."""
    b = chat.behaviour
    if b.fail_first_n and fake._should_fail(chat.key, b.fail_first_n):
        return 503, BUSY_MESSAGE
    if b.status == 404:
        return 404, f"model '{chat.model}' not found"
    if b.status == 503:
        return 503, BUSY_MESSAGE
    if b.status in _PROXY_MESSAGES:
        return b.status, _PROXY_MESSAGES[b.status]
    if b.status is not None:
        return b.status, _SERVER_ERROR_MESSAGE
    return None


def _answer_text(b: Behaviour, last_user: str, wants_json: bool) -> str:
    if b.answer is not None:
        text = b.answer
    else:
        excerpt = _MARKER_RE.sub("", last_user).strip()[:80]
        text = json.dumps({"answer": excerpt}) if wants_json else f"This is a fake answer to: {excerpt}"
    for flag, char in ((b.nul, "\x00"), (b.surrogate, "\ud800")):
        if flag:
            mid = len(text) // 2
            text = text[:mid] + char + text[mid:]
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m procos_testkit.fake_ollama", description="A fake Ollama v0.24.0."
    )
    parser.add_argument("--port", type=int, default=11435, help="0 picks a free port (printed on start)")
    parser.add_argument("--model", action="append", dest="models", help="installed model (repeatable)")
    parser.add_argument("--max-in-flight", type=int, default=0, help="503 beyond this many chats at once")
    defaults = Behaviour()
    for field in dataclasses.fields(Behaviour):  # one flag per Behaviour field, --delay-ms for delay_ms
        flag, default = "--" + field.name.replace("_", "-"), getattr(defaults, field.name)
        if field.name in _BOOL_FIELDS:
            parser.add_argument(flag, action="store_true")
        elif field.name == "status":
            parser.add_argument(flag, type=int, choices=_STATUSES)
        elif field.name in _INT_FIELDS:
            parser.add_argument(flag, type=int, default=default)
        else:
            parser.add_argument(flag, default=default)
    args = parser.parse_args(argv)
    behaviour = Behaviour(**{field.name: getattr(args, field.name) for field in dataclasses.fields(Behaviour)})
    fake = FakeOllama(args.port, behaviour, tuple(args.models or DEFAULT_MODELS), args.max_in_flight)
    fake.start()
    fake.serve_until_signal()
    return 0


if __name__ == "__main__":
    sys.exit(main())
