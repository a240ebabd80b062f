//! The read side of `raectl`: renders the registry database for operators (tables and JSON).
