//! The PD pipeline: load sweeps against an OpenAI-compatible endpoint
//! (`bench`), an engine emulator (`emulate`) and plots (`viz`). Issue 7 is
//! built here a piece at a time; [`metrics`] is the first piece.

pub mod metrics;
