"""Schedules of cycles, faults and rewinds: the history a replay test puts deswm through.

A schedule is a list of :data:`Step` values: a :class:`Cycle`, possibly interrupted by
one :class:`Interruption`, or a :class:`Rewind` of the watermark (an operator replaying
days). :func:`deswm.testing._strategies.interruptions` draws schedules;
:func:`deswm.testing.assert_idempotent_replay` runs them. They are plain values, so a
failing example prints as something a person can read and replay by hand::

    [Cycle(store.advance#2 raise_after), Rewind(days=2), Cycle()]
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import attrs

from deswm import _checkpoints
from deswm._orchestrator import WatermarkOrchestrator
from deswm.testing._faults import (
    Fault,
    InjectedFault,
    at_checkpoint,
    fail_after,
    fail_mid_stream,
    fail_on,
    inject,
    missing_on,
)

__all__ = ["Cycle", "Interruption", "Rewind", "Step", "Target"]

Target = Literal["store", "source", "reader", "packer", "checkpoint"]
"""Where an interruption strikes: an orchestrator component, or a named checkpoint."""

_COMPONENTS: tuple[Target, ...] = ("store", "source", "reader", "packer")


@attrs.frozen
class Interruption:
    """One fault during one cycle.

    Args:
        target: the orchestrator component to wrap, or ``"checkpoint"``.
        name: the method of the component (``"advance"``, ``"read_many"``, ``"add"``,
            ...) or the checkpoint (``"bucket.after_publish"``, ...).
        call: which call, ``read_many`` item or checkpoint hit is hit (1-based).
        action: ``"raise"`` an :class:`~deswm.testing._faults.InjectedFault`;
            ``"raise_after"`` the call succeeded (a lost acknowledgement); ``"missing"``
            the file is briefly gone (``read_many`` items); ``"cut"`` the stream returned
            by the call ends with an error after ``after`` items.
        after: items a ``"cut"`` stream yields first.
    """

    target: Target
    name: str
    call: int = 1
    action: Literal["raise", "raise_after", "missing", "cut"] = "raise"
    after: int = 0

    def __attrs_post_init__(self) -> None:
        if self.call < 1:
            raise ValueError(f"call numbers start at 1, got {self.call}")
        if self.target == "checkpoint":
            if self.name not in _checkpoints.POINTS:
                raise ValueError(f"unknown checkpoint {self.name!r}")
            if self.action != "raise":
                raise ValueError("a checkpoint interruption can only raise")
        elif self.target not in _COMPONENTS:
            raise ValueError(f"unknown target {self.target!r}")

    def __str__(self) -> str:
        suffix = f" after {self.after}" if self.action == "cut" else ""
        return f"{self.target}.{self.name}#{self.call} {self.action}{suffix}"

    def fault(self) -> Fault:
        """The :class:`~deswm.testing._faults.Fault` that :meth:`applied` injects."""
        error = InjectedFault(f"injected: {self}")
        if self.action == "raise_after":
            return fail_after(self.call, error=error)
        if self.action == "missing":
            return missing_on(self.call)
        if self.action == "cut":
            return fail_mid_stream(self.after, self.call, error=error)
        return fail_on(self.call, error=error)

    @contextlib.contextmanager
    def applied(self, orchestrator: WatermarkOrchestrator) -> Iterator[None]:
        """Make the next cycles of ``orchestrator`` suffer this fault, until the block ends.

        A component is swapped for an :func:`~deswm.testing._faults.inject` proxy of
        itself and put back afterwards; a checkpoint fault uses
        :func:`~deswm.testing._faults.at_checkpoint`. Call numbers count from entering.
        """
        if self.target == "checkpoint":
            with at_checkpoint(self.name, InjectedFault(f"injected: {self}"), on=self.call):
                yield
            return
        original = getattr(orchestrator, self.target)
        setattr(orchestrator, self.target, inject(original, **{self.name: self.fault()}))
        try:
            yield
        finally:
            setattr(orchestrator, self.target, original)


@attrs.frozen
class Cycle:
    """Run one cycle, suffering ``interruption`` if there is one."""

    interruption: Interruption | None = None

    def __repr__(self) -> str:
        return f"Cycle({self.interruption})" if self.interruption else "Cycle()"


@attrs.frozen
class Rewind:
    """Move the watermark back ``days`` buckets with ``store.set`` (an operator's replay).

    Never before the pipeline's initial position: rows before it were never archived.
    """

    days: int

    def __attrs_post_init__(self) -> None:
        if self.days < 1:
            raise ValueError(f"a rewind moves back at least one day, got {self.days}")


Step = Cycle | Rewind
"""One step of a schedule."""
