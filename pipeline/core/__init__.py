"""The pure core: decode, guard, per-partition stage, policy, fleet arbitration, state codec.
Built on the kernel and the models; no I/O, no clock reads except where a caller passes one."""
