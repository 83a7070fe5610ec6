//! `kvprobe doctor`: what will carry KV traffic on this host and what is wrong.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

use super::CliError;
use crate::doctor::{self, Diagnosis, Facts, GatherOptions};
use crate::report::style::Style;

/// Arguments of `kvprobe doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Print JSON ({"facts": ..., "diagnosis": ...}; docs/SCHEMA.md)
    #[arg(long)]
    pub json: bool,
    /// Read the hardware (sysfs, procfs) under this root instead of / (fixture trees for tests and demos)
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub sysfs_root: PathBuf,
    /// NIXL C API library (libnixl_capi.so) or a folder holding it [env: KVPROBE_NIXL_LIB]
    #[arg(long, value_name = "PATH")]
    pub nixl_lib: Option<PathBuf>,
    /// UCX's libucp or a folder holding it [env: KVPROBE_UCX_LIB]; default: the UCX NIXL loads
    #[arg(long, value_name = "PATH")]
    pub ucx_lib: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    facts: &'a Facts,
    diagnosis: &'a Diagnosis,
}

/// Runs `f` with file descriptor 1 pointing at stderr: UCX logs to stdout
/// (UCX_LOG_FILE's default) and NIXL prints there too, and stdout must carry
/// only the report (JSON for automation).
fn stdout_to_stderr<T>(f: impl FnOnce() -> T) -> T {
    let _ = std::io::stdout().flush();
    // SAFETY: duplicating an open descriptor; the result is checked.
    let saved = unsafe { libc::dup(1) };
    // SAFETY: 1 and 2 are open descriptors of this process.
    if saved < 0 || unsafe { libc::dup2(2, 1) } < 0 {
        return f();
    }
    let r = f();
    // SAFETY: flushes C stdio buffers (null means all streams); then puts the
    // saved descriptor back and closes the copy.
    unsafe {
        libc::fflush(std::ptr::null_mut());
        libc::dup2(saved, 1);
        libc::close(saved);
    }
    r
}

/// Runs `doctor`. Exit code: 0 healthy, 1 warnings, 2 errors.
pub fn run(a: DoctorArgs) -> Result<ExitCode, CliError> {
    if !a.sysfs_root.is_dir() {
        return Err(CliError::usage(anyhow::anyhow!("--sysfs-root {}: not a directory", a.sysfs_root.display())));
    }
    let opts = GatherOptions { root: a.sysfs_root, nixl_lib: a.nixl_lib, ucx_lib: a.ucx_lib };
    let facts = stdout_to_stderr(|| doctor::gather(&opts));
    let diagnosis = doctor::diagnose(&facts);
    let mut out = std::io::stdout().lock();
    let text = if a.json {
        serde_json::to_string_pretty(&Report { facts: &facts, diagnosis: &diagnosis })
            .map_err(|e| CliError::failed(anyhow::anyhow!(e)))?
    } else {
        crate::report::doctor::render(&facts, &diagnosis, &Style::for_stdout())
    };
    let _ = writeln!(out, "{}", text.trim_end());
    let _ = out.flush();
    drop(out);
    let _ = std::io::stderr().flush();
    // NIXL and UCX stay loaded in this process, and their libraries'
    // destructors can crash it at exit (two copies of libnl: the
    // duplicate-libraries finding), which would turn the doctor's exit code
    // into 139. Everything is written: leave without running them.
    // SAFETY: fflush(NULL) flushes C stdio streams; _exit then ends the
    // process at once. What is still alive (facts, diagnosis, text) holds
    // only memory, and every output was flushed above.
    unsafe {
        libc::fflush(std::ptr::null_mut());
        libc::_exit(i32::from(diagnosis.exit_code))
    }
}
