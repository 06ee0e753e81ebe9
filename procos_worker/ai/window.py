"""The context window of one request: how many tokens it may hold, how many a prompt needs, which memory
turns fit, how ``procos.onOverflow=truncate`` cuts the ``context`` input, and the refusal
``PromptTooLong`` (BPMN error ``AI_PROMPT_TOO_LONG``) with the sizes and the model's context.

**The budget.** A request holds ``num_ctx`` tokens: the task's options (procos.options, topic defaults,
the registry's ``config_data.options``, ``OLLAMA_OPTIONS``), else the Modelfile's ``num_ctx``
(``/api/show``), else the server's default (``WINDOW_DEFAULT_NUM_CTX``: Ollama 0.24 uses
``OLLAMA_CONTEXT_LENGTH``, else 4096 on a machine without a large GPU); capped, as Ollama caps it, at
the context the model was trained for. Of that, the answer keeps ``num_predict`` tokens (else
``WINDOW_REPLY_TOKENS``); memory turns fill what the task's own messages leave of the rest.

**The estimate.** Ollama 0.24 has no tokenize endpoint. A prompt's tokens are estimated from its
characters: per message ``ceil(chars / chars_per_token)`` plus the chat template's tokens. Characters per
token come from this conversation's own requests (their stored ``prompt_eval_count``), else the model's
``performance_stats`` (``chars_per_token_prompt``), else ``WINDOW_CHARS_PER_TOKEN``. Ollama confirms:
requests go out with ``truncate: false``, so a prompt over ``num_ctx`` is refused (HTTP 400) rather than
cut. After such a refusal the prompt is fitted again with the *certain* bound, one token per UTF-8 byte
(a byte-level BPE or byte-fallback tokenizer never needs more): fewer turns, a shorter context. So a
task sends at most one over-long request, unless its own query and system prompt cannot be shown to fit.

A prompt longer than ``num_ctx`` x 16 characters is refused without being sent: no tokenizer averages 16
characters per token over ordinary text, and reading megabytes would keep Ollama (one request at a time)
from other tasks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID

from procos_worker.ai.llm import build_messages
from procos_worker.ai.memory import NO_MEMORY, MemoryScope, turn_messages
from procos_worker.errors import PromptTooLong
from procos_worker.models import ModelFacts, TaskInputs, Turn, TurnSize
from procos_worker.settings import WindowSettings

__all__ = [
    "OBVIOUS_CHARS_PER_TOKEN",
    "PLAIN_MAX_CHARS",
    "Budget",
    "ContextLimits",
    "Estimator",
    "Fit",
    "OnOverflow",
    "Prompt",
    "budget_for",
    "context_text",
    "cut_context",
    "estimator_for",
    "fit",
    "overflow_hint",
    "parse_on_overflow",
    "too_long",
]

OnOverflow = Literal["error", "truncate"]

# No tokenizer averages more characters per token over ordinary text (English ~4, code and JSON ~2,
# CJK ~0.5): a prompt longer than num_ctx times this is refused without being sent.
OBVIOUS_CHARS_PER_TOKEN = 16
# A plain task (no memory, onOverflow=error) whose messages are shorter than this is sent without
# computing its window: Ollama refuses an overflow of that size at once.
PLAIN_MAX_CHARS = 16_384
# Chat-template tokens: per message (role header and end marker; ~5.5 on smollm2's ChatML) and per
# request (the generation prompt, and a default system prompt some templates add: ~26 on smollm2).
_MESSAGE_TOKENS = 6
_REQUEST_TOKENS = 32
# What a measured request is corrected by before its characters per token are used: ChatML's exact
# tokens (5 per message, 3 for the generation prompt); templates that add more make the figure lower,
# so it errs on the side of more tokens.
_MEASURED_MESSAGE_TOKENS = 5
_MEASURED_REQUEST_TOKENS = 3
# A conversation figure from fewer prompt tokens than this says more about the template than the text.
_MIN_MEASURED_TOKENS = 200
_CPT_RANGE = (0.25, 16.0)
# How long a model's /api/show facts are reused (a changed Modelfile is rare; a 400 still catches it).
_SHOW_TTL_S = 300.0
_CUT_MARKER = "\n[... {cut:,} of {total:,} characters of the context were cut here to fit the model's context window]"


def parse_on_overflow(raw: Any) -> OnOverflow:
    """The parser of ``procos.onOverflow`` (``ValueError`` says what is wrong)."""
    if not isinstance(raw, str):
        raise ValueError(f"must be text, got {type(raw).__name__}")
    value = raw.strip()
    if value == "error":
        return "error"
    if value == "truncate":
        return "truncate"
    raise ValueError(f"must be 'error' or 'truncate', got {value[:80]!r}")


# -- the budget ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Budget:
    """The tokens one request may hold."""

    num_ctx: int
    source: str  # where num_ctx came from
    trained_ctx: int | None
    reply_tokens: int  # kept for the answer
    reply_source: str

    @property
    def prompt_tokens(self) -> int:
        """What the prompt may fill (memory never pushes it further; Ollama refuses only > num_ctx)."""
        return max(0, self.num_ctx - self.reply_tokens)

    def describe(self) -> str:
        return (f"num_ctx {self.num_ctx:,} ({self.source}), {self.reply_tokens:,} of it kept for the answer "
                f"({self.reply_source})")

    def record(self) -> dict[str, Any]:
        return {"num_ctx": self.num_ctx, "num_ctx_source": self.source, "trained_ctx": self.trained_ctx,
                "reply_tokens": self.reply_tokens, "reply_source": self.reply_source}


def budget_for(options: Mapping[str, Any], facts: ModelFacts, settings: WindowSettings) -> Budget:
    """The request's num_ctx as Ollama 0.24 resolves it, and the answer's share."""
    requested = options.get("num_ctx")
    if isinstance(requested, int) and not isinstance(requested, bool) and requested > 0:
        num_ctx, source = requested, "options"
    elif facts.num_ctx:
        num_ctx, source = facts.num_ctx, "the model's Modelfile"
    else:
        num_ctx, source = settings.default_num_ctx, "the server's default, WINDOW_DEFAULT_NUM_CTX"
    num_ctx = max(num_ctx, 4)  # Ollama's scheduler raises anything smaller to 4
    if facts.trained_ctx and num_ctx > facts.trained_ctx:
        # Ollama silently runs the model with its trained context instead (llm/server.go).
        num_ctx, source = facts.trained_ctx, f"{source}, capped at the {facts.trained_ctx:,} the model was trained for"
    predict = options.get("num_predict")
    if isinstance(predict, int) and not isinstance(predict, bool) and predict > 0:
        reply, reply_source = predict, "num_predict"
    else:
        reply, reply_source = settings.reply_tokens, "WINDOW_REPLY_TOKENS"
    return Budget(num_ctx, source, facts.trained_ctx, min(reply, num_ctx), reply_source)


class ContextLimits:
    """Each model's ``/api/show`` facts, cached per model (thread-safe)."""

    def __init__(self, show: Callable[[str], ModelFacts], settings: WindowSettings, *,
                 ttl_s: float = _SHOW_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._show = show
        self._settings = settings
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._facts: dict[str, tuple[float, ModelFacts]] = {}

    def budget(self, model: str, options: Mapping[str, Any]) -> Budget:
        """Raises what ``show`` raises (Ollama unreachable, model not found)."""
        return budget_for(options, self.facts(model), self._settings)

    def facts(self, model: str) -> ModelFacts:
        with self._lock:
            cached = self._facts.get(model)
        if cached is not None and self._clock() - cached[0] < self._ttl_s:
            return cached[1]
        facts = self._show(model)
        with self._lock:
            self._facts[model] = (self._clock(), facts)
        return facts


# -- the estimate -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Estimator:
    """Tokens from characters. ``certain``: never fewer than one token per UTF-8 byte."""

    chars_per_token: float
    source: str
    certain: bool = False

    def text(self, text: str) -> int:
        likely = math.ceil(len(text) / self.chars_per_token)
        return max(likely, _utf8_len(text)) if self.certain else likely

    def sized(self, chars: int, utf8_bytes: int) -> int:
        likely = math.ceil(chars / self.chars_per_token)
        return max(likely, utf8_bytes) if self.certain else likely

    def messages(self, messages: Sequence[Mapping[str, str]]) -> int:
        return sum(self.text(m["content"]) for m in messages) + _MESSAGE_TOKENS * len(messages) + _REQUEST_TOKENS

    def turn(self, size: TurnSize) -> int:
        return (self.sized(size.question_chars, size.question_bytes) + self.sized(size.answer_chars, size.answer_bytes)
                + 2 * _MESSAGE_TOKENS)

    def chars_within(self, text: str, tokens: int) -> int:
        """The longest head of ``text`` that takes at most ``tokens``."""
        if tokens <= 0:
            return 0
        keep = min(len(text), math.floor(tokens * self.chars_per_token))
        if not self.certain or _utf8_len(text[:keep]) <= tokens:
            return keep
        low, high = 0, min(keep, tokens)  # a character is at least one byte
        while low < high:
            middle = (low + high + 1) // 2
            if _utf8_len(text[:middle]) <= tokens:
                low = middle
            else:
                high = middle - 1
        return low

    def as_certain(self) -> Estimator:
        return dataclasses.replace(self, certain=True)

    def record(self) -> dict[str, Any]:
        return {"chars_per_token": round(self.chars_per_token, 3), "chars_per_token_source": self.source,
                "estimate": "one token per UTF-8 byte at least" if self.certain else "characters per token"}


def estimator_for(sizes: Sequence[TurnSize], model: str, measured: float | None, default: float) -> Estimator:
    """Characters per token from this conversation's own requests, else the model's performance_stats,
    else the configured default."""
    own = _conversation_chars_per_token(sizes, model)
    if own is not None:
        return Estimator(own, "this conversation's requests (stored prompt_eval_count)")
    if measured is not None and math.isfinite(measured) and _CPT_RANGE[0] <= measured <= _CPT_RANGE[1]:
        return Estimator(measured, "procos_ai_models.performance_stats")
    return Estimator(default, "WINDOW_CHARS_PER_TOKEN")


def _conversation_chars_per_token(sizes: Sequence[TurnSize], model: str) -> float | None:
    chars = tokens = 0
    for size in sizes:
        if size.model != model or not size.prompt_chars or not size.prompt_tokens or size.prompt_messages is None:
            continue
        text_tokens = size.prompt_tokens - _MEASURED_MESSAGE_TOKENS * size.prompt_messages - _MEASURED_REQUEST_TOKENS
        if text_tokens > 0:
            chars += size.prompt_chars
            tokens += text_tokens
    if tokens < _MIN_MEASURED_TOKENS:
        return None
    figure = chars / tokens
    return figure if _CPT_RANGE[0] <= figure <= _CPT_RANGE[1] else None


def _utf8_len(text: str) -> int:
    # Lone surrogates go to Ollama as U+FFFD: three bytes, as surrogatepass encodes them.
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _chars(messages: Sequence[Mapping[str, str]]) -> int:
    return sum(len(m["content"]) for m in messages)


# -- fitting ------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Fit:
    """What one try sends: which memory turns, and how much of the context input."""

    turns: tuple[TurnSize, ...]  # oldest first
    found: int  # earlier turns considered
    context_chars: int | None  # characters of the context input sent, when it was cut
    context_total: int | None  # its full length, when it was cut
    estimated_tokens: int

    def same_request(self, other: Fit) -> bool:
        return [t.id for t in self.turns] == [t.id for t in other.turns] and self.context_chars == other.context_chars


def context_text(context: str | dict[str, Any] | list[Any] | None) -> str:
    """The context input as the prompt writes it (JSON as text)."""
    if context is None:
        return ""
    return context if isinstance(context, str) else json.dumps(context, ensure_ascii=False)


def cut_context(text: str, keep: int) -> str:
    """The head of the context, and a line saying how much was cut (the model is told)."""
    return text[:keep] + _CUT_MARKER.format(cut=len(text) - keep, total=len(text))


def fit(inputs: TaskInputs, sizes: Sequence[TurnSize], budget: Budget, estimator: Estimator, *,
        on_overflow: OnOverflow, model: str) -> Fit:
    """Which turns (``sizes``: newest first) and how much context fit ``budget``; the newest turns are kept,
    a turn is never cut. With ``truncate``, memory goes first, then the end of the context. Raises
    ``PromptTooLong`` for a prompt obviously too long to send."""
    own = build_messages(inputs)
    if on_overflow == "truncate" and inputs.context is not None:
        text = context_text(inputs.context)
        fixed = build_messages(dataclasses.replace(inputs, context=cut_context(text, 0)))
    else:
        text, fixed = "", own
    if _chars(fixed) > budget.num_ctx * OBVIOUS_CHARS_PER_TOKEN:
        raise too_long(model, budget, fixed, estimator=estimator, refused_by=None,
                       hint=overflow_hint(on_overflow, inputs))
    own_tokens = estimator.messages(own)
    if own_tokens <= budget.prompt_tokens or not text:
        room, used = budget.prompt_tokens - own_tokens, 0
        chosen: list[TurnSize] = []
        for size in sizes:
            cost = estimator.turn(size)
            if used + cost > room:
                break  # older turns go with it: the conversation sent stays contiguous
            chosen.append(size)
            used += cost
        return Fit(tuple(reversed(chosen)), len(sizes), None, None, own_tokens + used)
    keep = estimator.chars_within(text, budget.prompt_tokens - estimator.messages(fixed))
    if keep >= len(text):
        return Fit((), len(sizes), None, None, own_tokens)
    cut = build_messages(dataclasses.replace(inputs, context=cut_context(text, keep)))
    return Fit((), len(sizes), keep, len(text), estimator.messages(cut))


# -- what one try sends ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Prompt:
    """The messages of one try, and what the stored input row says about them."""

    messages: list[dict[str, str]]
    inputs: TaskInputs
    model: str
    memory: MemoryScope = NO_MEMORY
    memory_key: str | None = None
    turns: tuple[Turn, ...] = ()  # sent, oldest first
    sizes: tuple[TurnSize, ...] = ()  # every turn considered, newest first
    fitted: Fit | None = None
    budget: Budget | None = None
    estimator: Estimator | None = None
    attempt: int = 1
    refused: int = 0  # how often Ollama refused an earlier try of this task as too long
    known_turns: Mapping[UUID, Turn] = field(default_factory=dict)  # texts fetched (a retry picks from them)

    @classmethod
    def plain(cls, inputs: TaskInputs, model: str) -> Prompt:
        """The task's own messages, no window computed (Ollama refuses an overflow)."""
        return cls(messages=build_messages(inputs), inputs=inputs, model=model)

    @classmethod
    def assemble(cls, inputs: TaskInputs, fitted: Fit, texts: Mapping[UUID, Turn], **fields: Any) -> Prompt:
        """The messages of ``fitted``: system prompt, the memory turns (oldest first), the user message."""
        own_inputs = inputs if fitted.context_chars is None else dataclasses.replace(
            inputs, context=cut_context(context_text(inputs.context), fitted.context_chars))
        own = build_messages(own_inputs)
        turns = tuple(texts[size.id] for size in fitted.turns)
        return cls(messages=[*own[:-1], *turn_messages(turns), own[-1]], inputs=inputs, turns=turns,
                   fitted=fitted, known_turns=texts, **fields)

    @property
    def truncated(self) -> bool:
        return self.fitted is not None and self.fitted.context_chars is not None

    @property
    def chars(self) -> int:
        return _chars(self.messages)

    def record(self) -> dict[str, Any]:
        """What the input row adds to its content_data (beside every message sent)."""
        data: dict[str, Any] = {}
        if self.memory.enabled:
            data["memory_context_ids"] = [str(turn.id) for turn in self.turns]
            data["memory"] = {"scope": str(self.memory), "key": self.memory_key, "turns_found": len(self.sizes),
                              "turns_sent": len(self.turns)}
        if self.budget is not None and self.estimator is not None and self.fitted is not None:
            data["window"] = {**self.budget.record(), **self.estimator.record(),
                              "estimated_prompt_tokens": self.fitted.estimated_tokens, "attempt": self.attempt,
                              "refused_by_ollama": self.refused}
        if self.fitted is not None and self.fitted.context_chars is not None:
            data["truncation"] = {"context_chars": self.fitted.context_total,
                                  "context_chars_sent": self.fitted.context_chars}
        return data


def overflow_hint(on_overflow: OnOverflow, inputs: TaskInputs) -> str:
    """What the modeller can do about a prompt that does not fit."""
    if on_overflow == "error":
        return "Shorten the input, raise num_ctx (procos.options) or set procos.onOverflow=truncate."
    if inputs.context is None:
        return ("procos.onOverflow=truncate cuts only the context variable, and this task has none: shorten the "
                "prompt or raise num_ctx (procos.options).")
    return ("procos.onOverflow=truncate cuts only the context variable, and the query and system prompt alone do "
            "not fit: shorten them or raise num_ctx (procos.options).")


def too_long(model: str, budget: Budget | None, messages: Sequence[Mapping[str, str]], *,
             estimator: Estimator | None, refused_by: str | None, hint: str, memory_turns: int = 0) -> PromptTooLong:
    """The refusal, with the sizes and the model's context. ``refused_by``: Ollama's error, or None when the
    prompt was not sent."""
    system = sum(len(m["content"]) for m in messages if m["role"] == "system")
    user = len(messages[-1]["content"]) if messages else 0
    sizes = f"{_chars(messages):,} characters (system prompt {system:,}, user message {user:,}"
    sizes += f", {memory_turns} memory turns)" if memory_turns else ")"
    if estimator is not None:
        sizes += (f", about {estimator.messages(messages):,} tokens at {estimator.chars_per_token:.2f} characters "
                  "per token")
    context = budget.describe() if budget is not None else "num_ctx unknown (Ollama's /api/show failed)"
    how = (f"not sent: more than {OBVIOUS_CHARS_PER_TOKEN} characters per token of context" if refused_by is None
           else f"Ollama refused it ({refused_by})")
    message = f"the prompt does not fit the context window of model '{model}': {sizes}; {context}; {how}. {hint}"
    details = json.dumps({"model": model, "budget": budget.record() if budget else None,
                          "estimate": estimator.record() if estimator else None, "characters": _chars(messages),
                          "system_chars": system, "user_chars": user, "memory_turns": memory_turns,
                          "refused_by_ollama": refused_by}, ensure_ascii=False)
    return PromptTooLong(message, details=f"{message}\n{details}")
