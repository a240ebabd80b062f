//! The SQLite owner: registry rows, sessions, history and the outbox (being written).
