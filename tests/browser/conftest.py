"""What every browser test shares: how long Playwright's assertions wait."""

from __future__ import annotations

import pytest

#: Playwright's assertions (`expect`) wait 5 s by default, its page actions 30 s. With a retrain running
#: on two cores the Airflow UI's trigger form refetches every query of the DAG before it opens the new
#: run's page, and that took longer than 5 s in CI.
EXPECT_TIMEOUT_MS = 60_000


@pytest.fixture(autouse=True, scope="session")
def _expect_timeout() -> None:
    try:
        from playwright.sync_api import expect
    except ImportError:  # the modules skip themselves without playwright
        return
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
