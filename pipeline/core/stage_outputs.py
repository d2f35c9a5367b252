"""What a stage hands out for one batch or tick: anomalies, decisions, verdicts, rejects,
incident events (encoded and published by the application)."""

from __future__ import annotations

from dataclasses import dataclass, field

from selfheal.pipeline.core.incidents import IncidentEvent
from selfheal.pipeline.kernel.types import Anomaly, Decision, Reject, Verification


@dataclass(slots=True)
class Outputs:
    anomalies: list[Anomaly] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    verifications: list[Verification] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    incidents: list[IncidentEvent] = field(default_factory=list)
    accepted: int = 0

    def extend(self, other: Outputs) -> None:
        self.anomalies.extend(other.anomalies)
        self.decisions.extend(other.decisions)
        self.verifications.extend(other.verifications)
        self.rejects.extend(other.rejects)
        self.incidents.extend(other.incidents)
        self.accepted += other.accepted

    def __bool__(self) -> bool:
        return bool(
            self.anomalies or self.decisions or self.verifications or self.rejects or self.incidents
        )
