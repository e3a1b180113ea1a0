"""Deciding a batch size before training: probes, pilots, races, calibration, the recommendation.

``recommend(task)`` measures memory and throughput, runs short pilots from scratch, races learning
rates, fits the noise scale's level and growth, plans T(B) for every candidate batch size and
returns a :class:`Recommendation` (a fixed configuration for a framework's trainer). To decide
while training instead, use :func:`batchsage.fit`.
"""

from batchsage.decide._recommend import recommend
from batchsage.decide.pilots import FromLive, FromScratch, PilotSchedule, Runner
from batchsage.decide.recommendation import SCHEMA_VERSION, NoiseSummary, PilotRun, Recommendation

__all__ = [
    "SCHEMA_VERSION",
    "FromLive",
    "FromScratch",
    "NoiseSummary",
    "PilotRun",
    "PilotSchedule",
    "Recommendation",
    "Runner",
    "recommend",
]
