"""The application: runners, CLI, demo, report, simulator. The only layer that knows both the
core and the connectors, and wires one to the other."""
