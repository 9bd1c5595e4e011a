"""Waiting for something to happen (a port answers, a part is healthy, a process is gone), with
tenacity: one attempt function that returns when the condition holds and raises `NotYet`, saying
why not, while it does not. The caller turns the last `NotYet` into its own error message, which
says what was waited for and for how long."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

T = TypeVar("T")


class NotYet(Exception):
    """The awaited condition does not hold yet; the message says why (shown when time runs out)."""


def poll(attempt: Callable[[], T], timeout: float, interval: float) -> T:
    """Call `attempt` every `interval` seconds until it returns, and return its result. `NotYet` from
    it means "try again"; after `timeout` seconds the last `NotYet` is raised. Any other exception
    ends the wait at once (a process that exited need not be waited for)."""
    retrying = Retrying(
        stop=stop_after_delay(timeout), wait=wait_fixed(interval), retry=retry_if_exception_type(NotYet), reraise=True
    )
    return retrying(attempt)
