"""What the fleet log says of its storms, for views (the operator console) and resolutions:
plain rows, not part of the arbiter's state (``fleet.FleetArbiter``)."""

from __future__ import annotations

from dataclasses import dataclass

from selfheal.pipeline.kernel.types import RepairAction


@dataclass(frozen=True, slots=True)
class ActiveStorm:
    """A running storm as the fleet log says: its escalation id is what an operator releases."""

    id: str
    action: RepairAction
    count: int
    entities: tuple[str, ...]
    last_need: float
    #: held entities whose condition is still flagged
    flagged: int


@dataclass(frozen=True, slots=True)
class OrphanStorm:
    """A storm over that its escalating engine did not resolve (``orphaned_storms``)."""

    id: str
    action: RepairAction
    kind: str
    rule: str
    count: int
    entities: tuple[str, ...]
    #: the last event time it was needed: its resolution is a storm window later
    last_need: float
