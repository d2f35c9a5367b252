"""selfheal pipeline, in three layers: ``kernel`` (shared types and protocols), ``core`` (pure
decode, guard, stage, policy) and ``app`` (runners, CLI, demo, report)."""
