"""What identifies one attempt at a task: the hash of what the model is asked (input row -> **input hash**).

A task fetched again reuses a stored answer only when its ``input_hash`` matches: the same messages (the
prompt, system prompt and context exactly as sent), the same model and options, in the same process
instance. The hash is stored on the input and the output row (unique per task id, row type and hash).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["input_hash"]


def input_hash(process_instance_id: str, messages: Sequence[Mapping[str, str]], model: str,
               options: Mapping[str, Any]) -> str:
    """A hex SHA-256 of the attempt's identity (stable across processes and Python versions)."""
    identity = {"process_instance_id": process_instance_id, "messages": list(messages), "model": model,
                "options": dict(options)}
    # ensure_ascii keeps lone surrogates (a Json input may hold them) encodable; sort_keys makes it canonical.
    canonical = json.dumps(identity, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()
