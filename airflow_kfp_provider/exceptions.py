"""The provider's errors, raised where the failure is known (not classified later from message text).

``KfpConfigError`` (a bad connection, pipeline package or runner) fails the task at once: retrying
cannot help. ``KfpTransientError`` (backend unreachable, 5xx, 429) is worth trying again: the wait loop
retries it. ``KfpRunNotFound`` and ``KfpApiError`` (the API refused the request; ``KfpAuthError`` for
refused credentials) end a wait at once.
"""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowException, AirflowFailException


class KfpHookError(AirflowException):
    """A KFP call failed."""


class KfpConfigError(AirflowFailException):
    """The configuration is wrong (connection, backend, pipeline package): retrying cannot help."""


class KfpTransientError(KfpHookError):
    """The backend could not be reached or answered 5xx/429: worth trying again."""


class KfpRunNotFound(KfpHookError):
    """No run with that id."""


class KfpApiError(KfpHookError):
    """The KFP API refused the request (4xx other than 404 and 429)."""


class KfpAuthError(KfpApiError):
    """The KFP API refused the credentials (401/403)."""
