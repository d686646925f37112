//! One error type for the whole product: a stable snake_case code users can search for, a kind
//! that decides the HTTP status / exit code, and a human message that never carries a secret or a
//! data value the caller may not see.

use std::fmt;

/// What sort of failure this is; the server maps it to an HTTP status, the CLI to an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: malformed request (bad JSON, unknown field).
    BadRequest,
    /// 401: missing, bad or expired credential.
    Unauthenticated,
    /// 403: authenticated but not allowed.
    Forbidden,
    /// 404: not found, or belongs to another tenant.
    NotFound,
    /// 409: duplicate.
    Conflict,
    /// 413: body over its limit.
    PayloadTooLarge,
    /// 422: well-formed but invalid value.
    Unprocessable,
    /// 429: rate limited or locked out; `retry_after_s` is `None` when only an admin can unlock.
    TooManyRequests { retry_after_s: Option<u64> },
    /// 503: a dependency is down.
    Unavailable,
    /// 500: a bug or an unexpected failure; the message is generic, details go to the log.
    Internal,
}

/// The product's error: `code` is stable, `message` is for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoatError {
    pub kind: ErrorKind,
    pub code: &'static str,
    pub message: String,
}

pub type Result<T, E = MoatError> = std::result::Result<T, E>;

impl MoatError {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        Self { kind, code, message: message.into() }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, code, message)
    }
    pub fn unauthenticated(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthenticated, code, message)
    }
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, code, message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, code, message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, code, message)
    }
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unprocessable, code, message)
    }
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, code, message)
    }
    /// An unexpected failure. The message shown to the caller is generic on purpose: the cause
    /// is logged by whoever builds this, never echoed (it may hold paths, SQL or values).
    pub fn internal(code: &'static str) -> Self {
        Self::new(ErrorKind::Internal, code, "internal error; see the server log")
    }
}

impl fmt::Display for MoatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error[{}]: {}", self.code, self.message)
    }
}

impl std::error::Error for MoatError {}
