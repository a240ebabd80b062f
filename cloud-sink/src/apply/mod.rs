//! Decoding and validation, the per-session fold, and the SQL that writes it.
