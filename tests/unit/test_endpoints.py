"""Issue 15 item 5: the endpoint pool on scripted servers: least work in flight, draining a down
endpoint without failing the chat, probing it back, model lists per endpoint, and what comes out when
no endpoint can serve."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from procos_testkit.memory_llm import ScriptedLlm
from procos_worker.ai.endpoints import EndpointPool, full_model_name
from procos_worker.errors import LlmBusy, LlmUnavailable, ModelNotFound
from procos_worker.models import ModelFacts
from procos_worker.settings import BackoffSettings, OllamaSettings

A, B = "http://127.0.0.1:1", "http://127.0.0.1:2"
HI = [{"role": "user", "content": "hi"}]


class Listing(ScriptedLlm):
    """A scripted server whose ``ping`` lists ``models``."""

    def __init__(self, *models: str) -> None:
        super().__init__()
        self.models = list(models or ["smollm2:135m"])

    def ping(self) -> list[str]:
        self._called("ping")
        return self.models


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Probes(list[Callable[[], None]]):
    """Background probes the pool asked for (it spawns them under its lock); ``run`` does them now."""

    def run(self) -> None:
        while self:
            self.pop(0)()


def pool(*clients: Listing, clock: Clock | None = None, probes: Probes | None = None) -> EndpointPool:
    urls = [A, B][: len(clients)]
    settings = OllamaSettings(base_urls=urls) if len(urls) > 1 else OllamaSettings(base_url=urls[0])
    return EndpointPool(settings, BackoffSettings(), clients=dict(zip(urls, clients, strict=True)),
                        clock=clock or Clock(), draw=lambda: 0.5,
                        spawn=(probes if probes is not None else Probes()).append)


def test_full_model_name_adds_latest() -> None:
    assert full_model_name("m") == "m:latest" and full_model_name("ns/m:1b") == "ns/m:1b"
    assert full_model_name("host:5000/m") == "host:5000/m:latest"


def test_single_tasks_alternate_and_concurrent_ones_go_to_the_idle_endpoint() -> None:
    a, b = Listing(), Listing()
    p = pool(a, b)
    for _ in range(4):
        p.chat(HI)
    assert len(a.calls_to("chat")) == len(b.calls_to("chat")) == 2
    # One chat held on A: the next two go to B (least work in flight), then A and B are even.
    a.hold()
    held = threading.Thread(target=p.chat, args=(HI,))
    held.start()
    a.wait_in_chat(1)
    p.chat(HI)
    p.chat(HI)
    assert len(b.calls_to("chat")) == 4
    assert [s.in_flight for s in p.states()] == [1, 0]
    a.release()
    held.join(5)
    assert [s.in_flight for s in p.states()] == [0, 0]


def test_a_down_endpoint_is_drained_and_the_chat_moves_on_without_failing() -> None:
    a, b = Listing(), Listing()
    clock, probes = Clock(), Probes()
    p = pool(a, b, clock=clock, probes=probes)
    p.chat(HI)  # lists read; A answered
    a.down = True
    results = [p.chat(HI) for _ in range(4)]
    assert all(r.content == b.answer for r in results)
    assert len(a.calls_to("chat")) == 2  # the one that found it down, then no more work
    state = p.states()[0]
    assert not state.up and "refuses" in (state.down_reason or "")
    # Back up: the background probe after the backoff delay finds it, and it gets work again.
    clock.now += 3600
    p.chat(HI)  # the backoff delay has passed: a probe is started (it finds A still down)
    probes.run()
    assert not p.states()[0].up
    a.down = False
    clock.now += 3600
    p.chat(HI)
    probes.run()
    assert p.states()[0].up
    p.chat(HI)
    p.chat(HI)
    assert len(a.calls_to("chat")) >= 3


def test_busy_endpoint_passes_the_chat_on_and_is_probed() -> None:
    a, b = Listing(), Listing()
    probes = Probes()
    p = pool(a, b, probes=probes)
    a.fail("chat", LlmBusy("503 after its tries"))
    assert p.chat(HI).content == b.answer
    probes.run()
    assert len(a.calls_to("ping")) == 2 and p.states()[0].up  # the probe answered: still up
    a.fail("chat", LlmBusy("503 again"))
    a.fail("ping", LlmUnavailable("gone"))
    assert p.chat(HI).content == b.answer
    probes.run()
    assert not p.states()[0].up  # the probe failed: drained  # the probe answered: still up


def test_the_model_goes_only_where_it_is_listed() -> None:
    a, b = Listing("smollm2:135m"), Listing("smollm2:135m", "big:1b")
    p = pool(a, b)
    for _ in range(3):
        p.chat(HI, model="big:1b")
    assert not a.calls_to("chat") and len(b.calls_to("chat")) == 3


def test_model_on_no_endpoint_is_model_not_found() -> None:
    a, b = Listing(), Listing()
    a.fail("chat", ModelNotFound("404 a"))
    b.fail("chat", ModelNotFound("404 b"))
    with pytest.raises(ModelNotFound) as info:
        pool(a, b).chat(HI, model="nope:1b")
    assert "none of the Ollama endpoints" in info.value.message


def test_all_down_is_llm_unavailable_and_every_chat_tries_them_all() -> None:
    a, b = Listing(), Listing()
    a.down = b.down = True
    p = pool(a, b)
    for _ in range(2):
        with pytest.raises(LlmUnavailable) as info:
            p.chat(HI)
        assert "no Ollama endpoint" in info.value.message
    assert len(a.calls_to("chat")) == len(b.calls_to("chat")) == 2
    with pytest.raises(LlmUnavailable, match="none of the 2"):
        p.ping()
    b.down = False
    assert p.chat(HI).content == b.answer and p.states()[1].up


def test_busy_everywhere_stays_busy_not_unavailable() -> None:
    a, b = Listing(), Listing()
    a.fail("chat", LlmBusy("busy a"))
    b.fail("chat", LlmBusy("busy b"))
    with pytest.raises(LlmBusy):
        pool(a, b).chat(HI)


def test_one_endpoint_passes_its_errors_through_unchanged() -> None:
    a = Listing()
    p = pool(a)
    error = LlmBusy("just busy")
    a.fail("chat", error)
    with pytest.raises(LlmBusy) as info:
        p.chat(HI)
    assert info.value is error
    a.down = True
    with pytest.raises(LlmUnavailable, match="refuses"):
        p.chat(HI)
    assert not a.calls_to("ping")  # one endpoint: no model lists, no probes


def test_ping_lists_the_models_of_the_endpoints_that_answer() -> None:
    a, b = Listing("x:1"), Listing("y:2")
    b.down = True
    p = pool(a, b)
    assert p.ping() == ["x:1"]
    assert [s.up for s in p.states()] == [True, False]


def test_think_format_and_options_reach_the_endpoint() -> None:
    a = Listing()
    pool(a).chat(HI, model="smollm2:135m", options={"temperature": 0}, format={"type": "object"}, think="low")
    args = a.calls_to("chat")[0].args
    assert args["think"] == "low" and args["format"] == {"type": "object"} and args["options"] == {"temperature": 0}


def test_show_asks_an_endpoint_that_is_up_and_skips_a_down_one() -> None:
    """The context window's facts (``show``) come from the endpoints as a chat would: a down endpoint is
    drained and another asked; with every endpoint down the answer is ``LlmUnavailable`` (the gate waits)."""
    a, b = Listing(), Listing()
    b.facts = ModelFacts(num_ctx=2048, trained_ctx=8192)
    a.down = True
    p = pool(a, b)
    assert p.show("smollm2:135m") == ModelFacts(num_ctx=2048, trained_ctx=8192)
    assert [s.up for s in p.states()] == [False, True]
    b.down = True
    with pytest.raises(LlmUnavailable):
        p.show("smollm2:135m")
