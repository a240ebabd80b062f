//! The daemon: wires capture, parsers, registry core, store, probes and publisher together.
