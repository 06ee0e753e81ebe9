#!/usr/bin/env python3
"""Import a local GGUF into a running Ollama under a given name, then load it.

Standard library only, so `stack/ollama.sh` can run it with whatever python3 is on the
machine (no venv, no `ollama` client needed). Skips the import when /api/tags already lists
the model with the digest recorded by the last import of the same inputs.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


def log(msg: str) -> None:
    print(f"ollama: {msg}", file=sys.stderr, flush=True)


def request(base: str, method: str, path: str, body: Any = None, timeout: float = 600) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def file_sha256(gguf: Path) -> str:
    # Hashing ~90 MB on every `up` costs ~0.3 s; cache it keyed by size and mtime.
    st = gguf.stat()
    cache = gguf.with_name(gguf.name + ".sha256")
    key = f"{st.st_size}:{st.st_mtime_ns}"
    if cache.exists():
        cached_key, _, digest = cache.read_text().strip().partition(" ")
        if cached_key == key and digest:
            return digest
    h = hashlib.sha256()
    with gguf.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = "sha256:" + h.hexdigest()
    cache.write_text(f"{key} {digest}\n")
    return digest


def push_blob(base: str, gguf: Path, digest: str) -> None:
    try:
        request(base, "HEAD", f"/api/blobs/{digest}")
        return  # already there
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise
    # Stream the file rather than reading it into memory.
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 11434, timeout=600)
    try:
        with gguf.open("rb") as f:
            conn.request(
                "POST",
                f"/api/blobs/{digest}",
                body=f,
                headers={"Content-Length": str(gguf.stat().st_size)},
            )
            resp = conn.getresponse()
            text = resp.read().decode(errors="replace")
        if resp.status not in (200, 201):
            raise RuntimeError(f"blob upload failed: HTTP {resp.status} {text}")
    finally:
        conn.close()


def listed_digest(base: str, model: str) -> str | None:
    tags = request(base, "GET", "/api/tags", timeout=30)
    for m in tags.get("models", []):
        if m.get("name") == model or m.get("model") == model:
            return str(m.get("digest"))
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--gguf", required=True, type=Path)
    ap.add_argument("--template", required=True, type=Path)
    ap.add_argument("--params", required=True, type=Path)
    ap.add_argument("--stamp", required=True, type=Path)
    args = ap.parse_args()
    base = str(args.base_url).rstrip("/")
    model = str(args.model)

    template = args.template.read_text()
    params = json.loads(args.params.read_text())
    blob = file_sha256(args.gguf)
    inputs = hashlib.sha256(json.dumps([model, blob, template, params], sort_keys=True).encode()).hexdigest()

    stamp: dict[str, str] = {}
    if args.stamp.exists():
        try:
            stamp = json.loads(args.stamp.read_text())
        except ValueError:
            stamp = {}
    current = listed_digest(base, model)
    if current and stamp.get("inputs") == inputs and stamp.get("digest") == current:
        log(f"model {model} already imported (digest {current[:12]})")
    else:
        t0 = time.monotonic()
        push_blob(base, args.gguf, blob)
        result = request(
            base,
            "POST",
            "/api/create",
            {
                "model": model,
                "files": {args.gguf.name: blob},
                "template": template,
                "parameters": params,
                "stream": False,
            },
        )
        if not result or result.get("status") != "success":
            raise RuntimeError(f"/api/create answered {result!r}")
        current = listed_digest(base, model)
        if not current:
            raise RuntimeError(f"/api/tags does not list {model} after /api/create")
        tmp = args.stamp.with_name(args.stamp.name + ".tmp")
        tmp.write_text(json.dumps({"inputs": inputs, "digest": current}) + "\n")
        os.replace(tmp, args.stamp)
        log(f"imported {model} (digest {current[:12]}) in {time.monotonic() - t0:.1f} s")

    # Load it now (keep_alive -1: stay loaded) so the first real request does not pay for it.
    t0 = time.monotonic()
    request(base, "POST", "/api/generate", {"model": model, "keep_alive": -1, "stream": False})
    log(f"model {model} loaded in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, RuntimeError, ValueError) as e:
        detail = ""
        if isinstance(e, urllib.error.HTTPError):
            detail = " " + e.read().decode(errors="replace")
        log(f"ERROR: model import failed: {e}{detail}")
        sys.exit(1)
