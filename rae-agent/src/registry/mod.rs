//! The registry core: a sans-IO state machine from Observations to Changes.

pub mod change;

pub use change::{Cause, Change};
