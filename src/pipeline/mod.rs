//! The PD pipeline: load sweeps against an OpenAI-compatible endpoint
//! (`bench`), an engine emulator (`emulate`) and plots (`viz`).
//! [`metrics`] holds vLLM bench's definitions, [`arrivals`] the request-rate
//! schedules, [`result`] the files a bench run writes.

pub mod arrivals;
pub mod bench;
pub mod emulate;
pub mod http;
pub mod metrics;
pub mod model;
pub mod result;
pub mod viz;
