//! rae-proto: the wire contract. (Being written.)
