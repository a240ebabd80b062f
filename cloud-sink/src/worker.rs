//! Ordered batching per partition or lane, and offset tracking; sans-IO (`now` is an argument).
