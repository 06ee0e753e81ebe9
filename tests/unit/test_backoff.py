from __future__ import annotations

from procos_worker.backoff import Backoff
from procos_worker.settings import BackoffSettings

S = BackoffSettings(initial_s=0.5, max_s=4.0, multiplier=2.0, jitter=0.25)


def test_grows_exponentially_to_the_cap_without_jitter() -> None:
    backoff = Backoff(S, draw=lambda: 0.5)  # 0.5 -> zero spread
    assert [backoff.next_delay_s() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_jitter_spreads_within_bounds_and_never_exceeds_cap() -> None:
    low = Backoff(S, draw=lambda: 0.0)
    high = Backoff(S, draw=lambda: 1.0)
    assert low.next_delay_s() == 0.375 and high.next_delay_s() == 0.625
    for _ in range(10):
        assert high.next_delay_s() <= S.max_s


def test_reset_starts_over() -> None:
    backoff = Backoff(S, draw=lambda: 0.5)
    for _ in range(5):
        backoff.next_delay_s()
    backoff.reset()
    assert backoff.next_delay_s() == 0.5
