"""The small variables a completed task gets: where the answer is stored and what it cost, never the
answer itself. Each name starts with the task's result prefix (``procos.resultPrefix``, ``ai`` by
default: ``ai_context_id``, ...). Their lengths are checked where every outcome is built (``outcomes``).
"""

from __future__ import annotations

from typing import Any

from procos_worker.models import StoredOutput

__all__ = ["build_flags"]


def build_flags(output: StoredOutput, prefix: str = "ai") -> dict[str, Any]:
    """The completion variables of one stored output row, named ``<prefix>_<flag>``."""
    return {
        f"{prefix}_context_id": str(output.id),
        f"{prefix}_response_stored": True,
        f"{prefix}_response_length": output.response_length,
        f"{prefix}_model": output.model,
        f"{prefix}_provider": output.provider,
        f"{prefix}_prompt_tokens": output.prompt_tokens,
        f"{prefix}_completion_tokens": output.completion_tokens,
        f"{prefix}_total_tokens": output.prompt_tokens + output.completion_tokens,
        f"{prefix}_done_reason": output.done_reason or "",
    }
