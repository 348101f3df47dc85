"""What a third-party Flower App (``--app``) raised: the user's own errors, whole.

A ServerApp that raises ends the run; a ClientApp that raises becomes an error reply
(``CLIENT_APP_RAISED_EXCEPTION``), exactly as on Flower, and the run goes on. Either way
the user needs the traceback of their own code, every frame down to the failing line:
a ServerApp's is printed when the run ends, a ClientApp's as it happens (Flower's
logger, ``ERROR``, so also under ``--quiet``), once per failing line of code, with a
count of the calls that failed there. ``fedfleet simulate`` then exits 1 (2 stays for
its own bad input).
"""

from __future__ import annotations

import traceback
from collections import Counter
from dataclasses import dataclass, field
from logging import ERROR
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flwr.app import Message


class AppRaised(Exception):
    """The app's ``component`` (``"ServerApp"`` or ``"ClientApp"``) raised; ``trace`` is
    the whole traceback, ``calls`` how many calls raised."""

    def __init__(self, component: str, trace: str, *, summary: str, calls: int = 1) -> None:
        super().__init__(f"the app's {component} raised {summary}")
        self.component = component
        self.trace = trace
        self.calls = calls


def app_raised(exc: BaseException, *, component: str = "ServerApp", when: str = "") -> AppRaised:
    """An :class:`AppRaised` for an exception out of the app's ``component`` (its run,
    or ``when`` it happened, e.g. "while being imported")."""
    return AppRaised(
        component,
        "".join(traceback.format_exception(exc)),
        summary=f"{type(exc).__name__}: {exc}" + (f" {when}" if when else ""),
    )


def _failing_line(exc: BaseException) -> tuple[str, str, int]:
    """(exception type, file, line) of the innermost frame: one place in the code."""
    frames = traceback.extract_tb(exc.__traceback__)
    last = frames[-1] if frames else None
    return type(exc).__name__, last.filename if last else "", last.lineno or 0 if last else 0


@dataclass(frozen=True)
class ClientFailure:
    """What one ClientApp call raised, as plain text (it crosses from a worker
    process): its whole traceback, its failing line, and Flower's short reason."""

    summary: str  # "IndexError: list index out of range"
    trace: str  # every frame, down to the failing line
    place: tuple[str, str, int]  # (exception type, file, line)
    reason: str  # Flower's reason in the error reply: "<class 'IndexError'>:<'...'>"

    @classmethod
    def of(cls, exc: BaseException) -> ClientFailure:
        return cls(
            summary=f"{type(exc).__name__}: {exc}",
            trace="".join(traceback.format_exception(exc)),
            place=_failing_line(exc),
            reason=f"{type(exc)}:<'{exc}'>",
        )


@dataclass
class ClientErrors:
    """The ClientApp's exceptions of one run, logged once per failing line."""

    counts: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    first: str = ""

    def __call__(self, message: Message, failure: ClientFailure) -> None:
        from flwr.common.logger import log

        place = failure.place
        self.counts[place] += 1
        if self.counts[place] > 1:
            return
        trace = failure.trace
        self.first = self.first or failure.summary
        log(
            ERROR,
            "ClientApp raised an exception (node %s, %s message); later calls failing "
            "at the same line are counted, not shown again\n%s",
            message.metadata.dst_node_id,
            message.metadata.message_type,
            trace,
        )

    @property
    def calls(self) -> int:
        """ClientApp calls that raised."""
        return sum(self.counts.values())

    def raise_if_any(self) -> None:
        """After the run: :class:`AppRaised` if any ClientApp call raised."""
        if self.calls:
            places = len(self.counts)
            raise AppRaised(
                "ClientApp",
                "",
                summary=(
                    f"{self.first} in {self.calls} call(s), at {places} line(s) of code "
                    "(tracebacks above); the run went on as on Flower, the server got "
                    "each as an error reply"
                ),
                calls=self.calls,
            )
