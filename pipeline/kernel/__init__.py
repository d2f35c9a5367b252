"""The kernel: the vocabulary every layer shares (types, wire schemas, small containers) and the
protocols connectors implement. It imports nothing else of selfheal."""
