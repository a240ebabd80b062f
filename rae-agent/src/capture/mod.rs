//! The capture thread: AF_PACKET with a kernel BPF filter (being written).
