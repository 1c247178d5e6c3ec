//! The wall clock, in one place so handlers and commands agree on units (unix ms).
pub use herald_engine::now_ms;
