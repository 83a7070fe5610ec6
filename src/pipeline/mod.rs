//! The PD pipeline: load sweeps against an OpenAI-compatible endpoint
//! (`bench`), an engine emulator (`emulate`) and plots (`viz`). Issue 7 is
//! built here a piece at a time: so far [`metrics`] (vLLM bench's
//! definitions) and [`arrivals`] (request-rate schedules).

pub mod arrivals;
pub mod metrics;
