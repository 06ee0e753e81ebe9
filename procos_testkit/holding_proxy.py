"""The counting proxy, plus: hold requests whose path matches a pattern until the test says so.

The fault tests put it in front of Camunda or Ollama to stop a worker at an exact step (a ``/complete``
held while the worker is killed, a chat held before or after Ollama did the work).
"""

from __future__ import annotations

import contextlib
import http.client
import re
import threading
from collections import Counter
from typing import Any, Literal, cast

from procos_testkit.ollama_proxy import OllamaProxy, ProxyHandler, UpstreamError

__all__ = ["HoldPhase", "HoldingProxy"]

HoldPhase = Literal["request", "response"]


class HoldingProxy(OllamaProxy):
    """The counting proxy, plus: hold requests whose path matches a pattern until ``release``.

    ``phase="request"`` holds before forwarding (the upstream never saw it unless released with
    ``forward=True``); ``phase="response"`` forwards, waits for the upstream's whole answer, then holds
    it (the upstream did the work; the client does not hear of it unless released with ``forward=True``).
    A request not forwarded or relayed is answered by cutting its connection. ``answer`` makes the proxy
    itself answer requests whose path matches with a fixed status and body (a 429 from a gateway, ...).
    """

    def __init__(self, upstream: str, **kwargs: Any) -> None:
        super().__init__(upstream, **kwargs)
        self._hold_cond = threading.Condition()
        self._hold_pattern: re.Pattern[str] | None = None
        self._hold_phase: HoldPhase = "request"
        self._holding = 0
        self._decision: dict[int, bool] = {}
        self._generation = 0
        self.held: Counter[str] = Counter()
        self._answers: list[tuple[re.Pattern[str], int, bytes]] = []
        self.answered: Counter[str] = Counter()

    def answer(self, pattern: str, status: int, body: str = "") -> None:
        """Answer requests whose path matches ``pattern`` with ``status`` and ``body`` (until ``stop_answering``)."""
        with self._hold_cond:
            self._answers.append((re.compile(pattern), status, body.encode()))

    def stop_answering(self) -> None:
        with self._hold_cond:
            self._answers.clear()

    def _answer_for(self, path: str) -> tuple[int, bytes] | None:
        with self._hold_cond:
            for pattern, status, body in self._answers:
                if pattern.search(path):
                    self.answered[path] += 1
                    return status, body
        return None

    def hold(self, pattern: str, phase: HoldPhase = "request") -> None:
        with self._hold_cond:
            self._hold_pattern = re.compile(pattern)
            self._hold_phase = phase

    def wait_held(self, count: int = 1, timeout_s: float = 30.0) -> None:
        with self._hold_cond:
            if not self._hold_cond.wait_for(lambda: self._holding >= count, timeout=timeout_s):
                raise AssertionError(f"proxy: {count} held request(s) expected, {self._holding} after {timeout_s}s")

    def release(self, *, forward: bool) -> None:
        """Stop holding; let held requests through (``forward``) or cut them."""
        with self._hold_cond:
            self._decision[self._generation] = forward
            self._generation += 1
            self._hold_pattern = None
            self._hold_cond.notify_all()

    def stop(self) -> None:
        self.release(forward=False)
        super().stop()

    def _not_forwarded(self, path: str) -> None:
        """A request counted as forwarded on arrival was cut while held: it never reached the upstream."""
        with self._lock:
            self._forwarded[path] -= 1

    def _phase_for(self, path: str) -> HoldPhase | None:
        with self._hold_cond:
            if self._hold_pattern is None or not self._hold_pattern.search(path):
                return None
            return self._hold_phase

    def _wait_release(self, path: str) -> bool:
        with self._hold_cond:
            generation = self._generation
            self._holding += 1
            self.held[path] += 1
            self._hold_cond.notify_all()
            self._hold_cond.wait_for(lambda: self._generation > generation)
            self._holding -= 1
            return self._decision[generation]


class _HoldingHandler(ProxyHandler):
    def _forward(self, body: bytes) -> None:
        proxy = cast(HoldingProxy, self.owner)
        path = self.path.split("?", 1)[0]
        canned = proxy._answer_for(path)
        if canned is not None:
            proxy._not_forwarded(path)
            self.send_body(canned[0], canned[1], "application/json")
            return
        phase = proxy._phase_for(path)
        if phase is None:
            super()._forward(body)
        elif phase == "request":
            if proxy._wait_release(path):
                super()._forward(body)
            else:
                proxy._not_forwarded(path)
                self.abort()
        else:
            self._forward_then_hold(proxy, path, body)

    def _forward_then_hold(self, proxy: HoldingProxy, path: str, body: bytes) -> None:
        try:
            resp = self._send_upstream(body)
            data = resp.read()
        except (OSError, http.client.HTTPException, UpstreamError):  # the upstream failed: nothing to hold
            self._drop_upstream()
            self.abort()
            return
        if not proxy._wait_release(path):
            self._drop_upstream()
            self.abort()
            return
        headers = [(k, v) for k, v in resp.getheaders()
                   if k.lower() not in ("transfer-encoding", "content-length", "connection")]
        headers.append(("Content-Length", str(len(data))))
        with contextlib.suppress(OSError):
            self.wfile.write(self.head_bytes(resp.status, headers, add_date=False) + data)


HoldingProxy.handler_class = _HoldingHandler
