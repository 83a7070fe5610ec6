//! The result layer: NIXL status codes -> `Result`, and the one macro every
//! C API call goes through.

use std::fmt;
use std::sync::Mutex;

use nixl_sys as sys;

/// A raw `nixl_capi_status_t`, kept as an integer: releases differ in which
/// values they return, and an unknown value must not be undefined behaviour.
#[derive(Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct StatusCode(pub i32);

impl StatusCode {
    /// The symbolic name of the code, as NIXL's header spells it.
    pub fn name(self) -> &'static str {
        match self.0 {
            sys::NIXL_CAPI_SUCCESS => "SUCCESS",
            sys::NIXL_CAPI_IN_PROG => "IN_PROG",
            sys::NIXL_CAPI_ERROR_INVALID_PARAM => "ERROR_INVALID_PARAM",
            sys::NIXL_CAPI_ERROR_BACKEND => "ERROR_BACKEND",
            sys::NIXL_CAPI_ERROR_INVALID_STATE => "ERROR_INVALID_STATE",
            sys::NIXL_CAPI_ERROR_EXCEPTION => "ERROR_EXCEPTION",
            sys::NIXL_CAPI_ERROR_NO_TELEMETRY => "ERROR_NO_TELEMETRY",
            sys::NIXL_CAPI_ERROR_NOT_FOUND => "ERROR_NOT_FOUND",
            sys::NIXL_CAPI_ERROR_NOT_POSTED => "ERROR_NOT_POSTED",
            sys::NIXL_CAPI_ERROR_MISMATCH => "ERROR_MISMATCH",
            sys::NIXL_CAPI_ERROR_NOT_ALLOWED => "ERROR_NOT_ALLOWED",
            sys::NIXL_CAPI_ERROR_REPOST_ACTIVE => "ERROR_REPOST_ACTIVE",
            sys::NIXL_CAPI_ERROR_UNKNOWN => "ERROR_UNKNOWN",
            sys::NIXL_CAPI_ERROR_NOT_SUPPORTED => "ERROR_NOT_SUPPORTED",
            sys::NIXL_CAPI_ERROR_REMOTE_DISCONNECT => "ERROR_REMOTE_DISCONNECT",
            sys::NIXL_CAPI_ERROR_CANCELED => "ERROR_CANCELED",
            _ => "UNKNOWN_STATUS",
        }
    }

    /// A hint for codes whose meaning is not obvious from the name.
    pub fn hint(self) -> Option<&'static str> {
        match self.0 {
            sys::NIXL_CAPI_ERROR_BACKEND => Some(
                "NIXL <= 1.5.1 folds most failures (remote disconnect, mismatch, not supported...) into ERROR_BACKEND; \
                 NIXL_LOG_LEVEL=DEBUG and UCX_LOG_LEVEL=info show the cause",
            ),
            sys::NIXL_CAPI_ERROR_REMOTE_DISCONNECT => Some("the peer agent went away"),
            sys::NIXL_CAPI_ERROR_NOT_FOUND => {
                Some("no metadata loaded for that agent, or no backend can serve the request")
            }
            _ => None,
        }
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NIXL_CAPI_{} ({})", self.name(), self.0)
    }
}

impl fmt::Debug for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Non-error outcomes of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `NIXL_CAPI_SUCCESS`.
    Done,
    /// `NIXL_CAPI_IN_PROG`: a transfer is still running.
    InProgress,
}

/// Everything the NIXL layer can fail with.
#[derive(Debug, thiserror::Error)]
pub enum NixlError {
    /// A C API call returned an error status.
    #[error("{call} failed: {status}{}{}", .detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default(), .status.hint().map(|h| format!(" [{h}]")).unwrap_or_default())]
    Call {
        /// The C function, e.g. `nixl_capi_post_xfer_req`.
        call: &'static str,
        /// What it returned.
        status: StatusCode,
        /// The library's own message, when it offers one.
        detail: Option<String>,
    },
    /// The loaded library lacks an optional symbol this operation needs.
    #[error("the loaded NIXL C API has no {0} (a newer NIXL is needed for this operation)")]
    MissingSymbol(&'static str),
    /// The library could not be loaded.
    #[error(transparent)]
    Load(#[from] sys::LoadError),
    /// A call reported success but returned a null handle.
    #[error("{0} returned success but a null handle")]
    NullHandle(&'static str),
    /// A string argument contains a NUL byte.
    #[error("argument to {call} contains a NUL byte: {value:?}")]
    Nul {
        /// The C function.
        call: &'static str,
        /// The offending value.
        value: String,
    },
    /// A transfer did not finish in time.
    #[error(
        "{what} did not complete within {limit:?} (no error was reported: the transfer is stuck; a peer whose NIXL worker is never progressed, e.g. running without a progress thread, or a dead link, look like this)"
    )]
    Timeout {
        /// The transfer.
        what: String,
        /// The limit.
        limit: std::time::Duration,
    },
    /// An argument kvprobe refuses before calling NIXL.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// Turns a status into a `Result`; the single place where codes are judged.
pub fn check(
    call: &'static str,
    code: sys::nixl_capi_status_t,
    detail: impl FnOnce() -> Option<String>,
) -> Result<Status, NixlError> {
    match code {
        sys::NIXL_CAPI_SUCCESS => Ok(Status::Done),
        sys::NIXL_CAPI_IN_PROG => Ok(Status::InProgress),
        other => Err(NixlError::Call { call, status: StatusCode(other), detail: detail() }),
    }
}

/// Calls one `nixl_capi_*` function through the loaded library and checks its
/// status. Must be used inside an `unsafe` block whose `// SAFETY:` comment
/// justifies the arguments.
///
/// `nixl_call!(lib, nixl_capi_destroy_agent(raw))` expands to a
/// `Result<Status, NixlError>`.
macro_rules! nixl_call {
    ($lib:expr, $func:ident ( $($arg:expr),* $(,)? )) => {{
        let lib: &$crate::nixl::Lib = &$lib;
        match lib.raw.api.$func.as_ref() {
            Ok(f) => {
                let code = f($($arg),*);
                $crate::nixl::error::check(stringify!($func), code, || lib.last_error_message())
            }
            Err(_) => Err($crate::nixl::error::NixlError::MissingSymbol(stringify!($func))),
        }
    }};
}
pub(crate) use nixl_call;

/// Errors met while dropping NIXL objects. `Drop` never panics; it records the
/// error here, and the engine reports what accumulated at the end of a run.
static DROP_ERRORS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Records an error from a destructor.
pub(crate) fn record_drop_error(what: &str, err: &NixlError) {
    if let Ok(mut v) = DROP_ERRORS.lock() {
        if v.len() < 100 {
            v.push(format!("{what}: {err}"));
        }
    }
}

/// Takes the errors recorded by destructors so far.
pub fn take_drop_errors() -> Vec<String> {
    DROP_ERRORS.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_code_has_a_name_and_unknown_codes_are_safe() {
        for c in -14..=1 {
            assert_ne!(StatusCode(c).name(), "UNKNOWN_STATUS", "{c}");
        }
        assert_eq!(StatusCode(-99).name(), "UNKNOWN_STATUS");
        assert_eq!(StatusCode(-2).to_string(), "NIXL_CAPI_ERROR_BACKEND (-2)");
    }

    #[test]
    fn check_maps_success_progress_and_errors() {
        assert_eq!(check("f", 0, || None).unwrap(), Status::Done);
        assert_eq!(check("f", 1, || None).unwrap(), Status::InProgress);
        let e = check("nixl_capi_post_xfer_req", -13, || Some("peer gone".into())).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("nixl_capi_post_xfer_req"), "{msg}");
        assert!(msg.contains("REMOTE_DISCONNECT"), "{msg}");
        assert!(msg.contains("peer gone"), "{msg}");
    }
}
