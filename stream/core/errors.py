"""One root exception for bwp; every boundary wraps and chains into it.

Messages say what was expected and what came, e.g.
``TelemetryDecodeError("out_of_range", "packet_loss must be in [0, 1], got 1.5")``.
"""

from __future__ import annotations


class BwpError(Exception):
    """Root of every error bwp raises on purpose."""


class ConfigError(BwpError):
    """Settings are missing, contradictory or incomplete (e.g. SASL without a password)."""


class StackError(BwpError):
    """The embedded broker or Redis could not be started, reached or stopped."""


class TelemetryDecodeError(BwpError):
    """A telemetry record is not valid. ``code`` is machine-readable and goes to the DLQ headers."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:  # "code: message" reads well in logs
        return f"{self.code}: {self.message}"


class ModelError(BwpError):
    """A model artefact is missing, tampered with, or does not fit the expected shapes."""


class DataError(BwpError):
    """Input data (trace file, telemetry file) cannot be read or is not in the expected format."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised by ``bwp`` in the main thread like Ctrl-C, so that ``finally``
    blocks stop what a command started. Not a :class:`BwpError`: like Ctrl-C it is not a
    failure of the command, and ``except Exception`` does not swallow it."""


class ApiError(BwpError):
    """A request to the prediction API is refused: HTTP ``status``, machine-readable ``code``, and why."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"
