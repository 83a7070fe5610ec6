//! `kvprobe __fabric-report LIB`: loads one libfabric and prints what it
//! offers (version, providers, NIXL's rail pick) as JSON.
//!
//! `doctor` runs it as a child process: a libfabric brings its own providers
//! and, through them, rdma-core and libnl, which must not meet the copies
//! NIXL's wheel carries inside the doctor's process (two libnl in one
//! process crash it at exit), and a crash in a provider's constructor
//! stays in the child.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;

use super::CliError;

/// Arguments of `kvprobe __fabric-report`.
#[derive(Debug, clap::Args)]
pub struct FabricReportArgs {
    /// The libfabric.so.1 to load
    #[arg(value_name = "LIB")]
    pub lib: PathBuf,
}

/// Prints the report (exit 0), or why the library cannot be loaded (exit 2).
pub fn run(a: FabricReportArgs) -> Result<ExitCode, CliError> {
    let f = crate::fabric::Fabric::open(&a.lib).map_err(|e| CliError::usage(anyhow!(e)))?;
    let json = serde_json::to_string(&f.report()).map_err(|e| CliError::failed(anyhow!(e)))?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{json}");
    let _ = out.flush();
    drop(out);
    // A provider's destructor must not turn a finished report into a crash:
    // leave without running them.
    // SAFETY: fflush(NULL) flushes C stdio; _exit ends the process at once;
    // the libfabric handle and the report hold nothing that needs cleanup.
    unsafe {
        libc::fflush(std::ptr::null_mut());
        libc::_exit(0)
    }
}
