"""The small variables a completed task gets: where the answer is stored and what it cost, never the
answer itself. Their lengths are checked where every outcome is built (``outcomes``).
"""

from __future__ import annotations

from typing import Any

from procos_worker.models import StoredOutput

__all__ = ["build_flags"]


def build_flags(output: StoredOutput) -> dict[str, Any]:
    """The completion variables of one stored output row."""
    return {
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
