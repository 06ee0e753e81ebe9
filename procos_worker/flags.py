"""The small variables a task is completed with, each checked against Camunda's 4000-char columns.

Camunda keeps String variables in varchar(4000) columns (ACT_RU_VARIABLE.TEXT_ and the history
tables) and does not check the length: a longer value fails ``complete`` with HTTP 500 and leaves the
task locked. So nothing the worker sends may exceed the limit, and this module is where that is checked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from procos_worker.errors import VariableTooLong
from procos_worker.models import StoredOutput

__all__ = ["MAX_ERROR_MESSAGE_CHARS", "MAX_VARIABLE_CHARS", "build_flags", "check_variables", "clip_error_message"]

MAX_VARIABLE_CHARS = 4000
# Camunda cuts errorMessage to 666 characters; errorDetails has no limit.
MAX_ERROR_MESSAGE_CHARS = 666


def build_flags(output: StoredOutput) -> dict[str, Any]:
    """The completion variables: where the answer is stored and what it cost; never the answer."""
    flags: dict[str, Any] = {
        "ai_context_id": str(output.id),
        "ai_response_stored": True,
        "ai_response_length": output.response_length,
        "ai_model": output.model,
        "ai_provider": output.provider,
        "ai_prompt_tokens": output.prompt_tokens,
        "ai_completion_tokens": output.completion_tokens,
        "ai_total_tokens": output.prompt_tokens + output.completion_tokens,
        "ai_done_reason": output.done_reason or "",
    }
    check_variables(flags)
    return flags


def check_variables(variables: Mapping[str, Any]) -> None:
    """Raise ``VariableTooLong`` if any value would not fit a varchar(4000) column."""
    for name, value in variables.items():
        size = len(value) if isinstance(value, str) else len(json.dumps(value))
        if size > MAX_VARIABLE_CHARS:
            raise VariableTooLong(
                f"variable '{name}' would be {size} characters; Camunda stores at most {MAX_VARIABLE_CHARS}"
            )


def clip_error_message(message: str) -> str:
    """Fit ``message`` into Camunda's errorMessage, marking a cut with an ellipsis."""
    if len(message) <= MAX_ERROR_MESSAGE_CHARS:
        return message
    return message[: MAX_ERROR_MESSAGE_CHARS - 1] + "\u2026"
