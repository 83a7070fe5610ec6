//! kvprobe: tells the people who run prefill/decode-disaggregated LLM serving
//! whether their KV-cache transfer path is healthy and fast.
//!
//! Layers (see docs/ARCHITECTURE.md): `nixl-sys` (raw bindings, loaded at run
//! time) -> [`nixl`] (result layer and safe RAII types) -> [`engine`] (two
//! processes that move and verify data) -> [`report`] (schema, table, files)
//! -> [`cmd`] (one file per subcommand).

#![warn(missing_docs)]

pub mod child;
pub mod cmd;
pub mod cuda;
pub mod doctor;
pub mod elf;
pub mod engine;
pub mod fabric;
pub mod fabric_plugin;
pub mod hostinfo;
pub mod kv;
pub mod locate;
pub mod matrix;
pub mod mem;
pub mod nixl;
pub mod nvml;
pub mod peer;
pub mod pipeline;
pub mod report;
pub mod rng;
pub mod topology;
pub mod tp;
pub mod transport;
pub mod ucx;
pub mod units;
pub mod verdict;

/// kvprobe's version with the git revision it was built from.
pub fn version() -> &'static str {
    concat!(env!("CARGO_PKG_VERSION"), " (", env!("KVPROBE_GIT_REV"), ")")
}
