"""selfheal detectors: pure, synchronous, event-time online models and static rules.

Nothing here does I/O or reads a clock: time comes from the samples' timestamps.
"""
