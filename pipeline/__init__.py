"""selfheal pipeline: wire schemas, config, runner, policy, repair bookkeeping, state."""
