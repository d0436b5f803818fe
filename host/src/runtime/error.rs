//! Why a plugin call produced no response, told apart from wasmtime's errors.

use std::time::Duration;

use wasmtime::Trap;

use super::state::CallState;
use super::call::{CallLimits, hostcall_fuel};
use super::call_log::cut;
use crate::message::HandlerError;
use wasmux_bindings::HandlerError as WitHandlerError;

/// Longest handler error message passed on to the client and the log; the
/// rest is cut.
pub(super) const MAX_ERROR_TEXT: usize = 1024;

/// Why a plugin call produced no response.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The plugin declined: the request was bad, unsupported, or it failed.
    #[error("{}", handler_error_text(.0))]
    Handler(HandlerError),
    #[error("trapped: {0}")]
    Trap(String),
    /// Instantiation failed for a reason other than a trap or the limits.
    #[error("could not be instantiated: {0}")]
    Instantiate(String),
    #[error("ran past its deadline of {0:?}")]
    Timeout(Duration),
    #[error("ran out of memory: it asked for {asked} bytes, over its limit of {limit}")]
    OutOfMemory { asked: usize, limit: usize },
    #[error("returned an invalid response: {0}")]
    BadResponse(String),
    /// The guest handed the host values it cannot read: pointers or lengths
    /// out of bounds, invalid UTF-8, an invalid discriminant.
    #[error("handed the host invalid data: {0}")]
    InvalidData(String),
    /// The guest handed the host more bytes at once than a response may hold.
    #[error("handed the host more than {limit} bytes at once (a response may carry {max_response} bytes of content)")]
    TooMuchData { limit: usize, max_response: usize },
    /// No instance slot came free within the call's deadline (the server
    /// is at `max-concurrent-calls`): the plugin was not started.
    #[error("was not started: no instance slot came free within its deadline of {0:?}, the server is at its limit of concurrent plugin calls")]
    NoSlot(Duration),
    #[error("the server is shutting down")]
    ShuttingDown,
}

fn handler_error_text(error: &HandlerError) -> String {
    match error {
        HandlerError::BadRequest(m) => format!("bad request: {m}"),
        HandlerError::Unsupported(m) => format!("unsupported: {m}"),
        HandlerError::Internal(m) => format!("failed: {m}"),
    }
}


/// Which step of a call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Instantiate,
    Call,
}

/// Turns a failed instantiate or call into the cause the client is told.
pub(super) fn classify_failure(error: wasmtime::Error, phase: Phase, state: &CallState, limits: CallLimits) -> PluginError {
    if let Some(asked) = state.memory_refused {
        return PluginError::OutOfMemory { asked, limit: limits.memory };
    }
    // WASI's `exit` (a Python `sys.exit`, a JavaScript `process.exit`).
    if let Some(wasmtime_wasi::I32Exit(status)) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return PluginError::Trap(format!("exited with status {status} (the plugin called exit)"));
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => PluginError::Timeout(limits.deadline),
        Some(&trap) => {
            if let Some(backtrace) = error.downcast_ref::<wasmtime::WasmBacktrace>() {
                tracing::debug!(plugin = %state.log.plugin, version = %state.log.version, "trap backtrace:\n{backtrace}");
            }
            PluginError::Trap(describe_trap(trap))
        }
        // Not a trap: during a call, wasmtime refused to lift what the guest
        // handed over (the response, or an import's arguments).
        None if phase == Phase::Call => {
            let text = one_line(&error);
            // wasmtime's words for running out of hostcall fuel; its error
            // type is private, so the text is all there is to match.
            if text.contains("fuel allocated for hostcalls has been exhausted") {
                PluginError::TooMuchData { limit: hostcall_fuel(limits), max_response: limits.max_response }
            } else {
                PluginError::InvalidData(text)
            }
        }
        None => PluginError::Instantiate(one_line(&error)),
    }
}

/// A trap as one line for the client: wasmtime's description without its
/// `wasm trap: ` prefix, with a hint where the description alone puzzles.
fn describe_trap(trap: Trap) -> String {
    let text = trap.to_string();
    let text = text.strip_prefix("wasm trap: ").unwrap_or(&text);
    match trap {
        Trap::UnreachableCodeReached => format!("{text} (a panic or an abort in the plugin)"),
        _ => text.to_owned(),
    }
}

/// An error and its causes on one line, cut to a readable length.
fn one_line(error: &wasmtime::Error) -> String {
    let mut text = format!("{error:#}").replace('\n', " ");
    cut(&mut text, MAX_ERROR_TEXT);
    text
}

/// The handler error a plugin returned, in the host's terms, its message
/// cut to [`MAX_ERROR_TEXT`]: it goes into an error answer and the log, and
/// the plugin chose its length.
pub(super) fn handler_error(error: WitHandlerError) -> HandlerError {
    let cut_message = |mut message: String| {
        cut(&mut message, MAX_ERROR_TEXT);
        message
    };
    match error {
        WitHandlerError::BadRequest(m) => HandlerError::BadRequest(cut_message(m)),
        WitHandlerError::Unsupported(m) => HandlerError::Unsupported(cut_message(m)),
        WitHandlerError::Internal(m) => HandlerError::Internal(cut_message(m)),
    }
}

