"""selfheal detectors: pure, synchronous, event-time online models and static rules.

Nothing here does I/O or reads a clock: time comes from the samples' timestamps. One small base
class per family (``selfheal.models.base``): ``Judge`` (a metric series), ``LogJudge`` (an
entity's logs), ``DriftDetector`` (a sequential test on per-bucket counts).
"""
