//! The PD pipeline: load sweeps against an OpenAI-compatible endpoint
//! (`bench`), an engine emulator (`emulate`) and plots (`viz`).
//! [`metrics`] holds vLLM bench's definitions, [`arrivals`] the request-rate
//! schedules, [`result`] the files a bench run writes.

pub mod arrivals;
pub mod bench;
pub mod emulate;
pub mod http;
pub mod launch;
pub mod metrics;
pub mod model;
pub mod ray;
pub mod result;
pub mod viz;

/// The single-threaded tokio runtime `bench` and `emulate` run on (engines
/// and the load generator's timing do not need more; see docs/PIPELINE.md).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}
