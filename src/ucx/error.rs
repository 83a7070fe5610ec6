//! The result layer for UCX: `ucs_status_t` -> `Result`, and the one macro
//! every UCX call goes through.

use std::fmt;

use ucx_sys as sys;

/// A raw `ucs_status_t` with UCX's own description.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct UcsStatus(pub i32);

impl fmt::Debug for UcsStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UcsStatus({})", self.0)
    }
}

/// UCX failures.
#[derive(Debug, thiserror::Error)]
pub enum UcxError {
    /// A call returned an error status.
    #[error("{call} failed: {message} (ucs_status {code})")]
    Call {
        /// The C function.
        call: &'static str,
        /// The status code.
        code: i32,
        /// `ucs_status_string` of it.
        message: String,
    },
    /// The library could not be loaded.
    #[error(transparent)]
    Load(#[from] sys::LoadError),
    /// Two different UCX builds would end up in one process.
    #[error(
        "a different UCX is already loaded in this process ({loaded}); kvprobe would load {wanted}. Two UCX builds in one process do not mix: point --ucx-lib at the loaded one, or run without it"
    )]
    TwoBuilds {
        /// The one already mapped.
        loaded: String,
        /// The one kvprobe chose.
        wanted: String,
    },
    /// A call reported success but returned null.
    #[error("{0} returned success but a null handle")]
    NullHandle(&'static str),
    /// An operation did not finish in time.
    #[error("{what} did not complete within {limit:?}")]
    Timeout {
        /// The operation.
        what: String,
        /// The limit.
        limit: std::time::Duration,
    },
    /// An argument refused before calling UCX.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// Calls one UCX function that returns `ucs_status_t` and checks it. Must be
/// used inside an `unsafe` block whose `// SAFETY:` comment justifies the
/// arguments. Expands to `Result<(), UcxError>`.
macro_rules! ucx_call {
    ($lib:expr, $func:ident ( $($arg:expr),* $(,)? )) => {{
        let lib: &$crate::ucx::Lib = &$lib;
        let code = lib.raw.api.$func($($arg),*);
        lib.check(stringify!($func), code)
    }};
}
pub(crate) use ucx_call;

/// Errors met while releasing UCX objects in `Drop` (never a panic).
static DROP_ERRORS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

pub(crate) fn record_drop_error(what: &str, err: &UcxError) {
    if let Ok(mut v) = DROP_ERRORS.lock() {
        if v.len() < 100 {
            v.push(format!("{what}: {err}"));
        }
    }
}

/// Takes the errors recorded by UCX destructors so far.
pub fn take_drop_errors() -> Vec<String> {
    DROP_ERRORS.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default()
}
