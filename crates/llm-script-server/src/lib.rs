//! llm-script-server: the project's only test double — a scripted stand-in for LLM providers
//! that speaks OpenAI chat completions and Anthropic messages (plain and streaming) on
//! loopback, answers from an ordered script and records every request it received.
//!
//! It is used by tests and by hand, and by `builder eval` (crates/eval), whose gold and
//! broken replays answer the model with a script by design. No other production crate may
//! depend on it, and it must not depend on any builder crate.

mod script;
mod server;
mod wire;

#[cfg(test)]
mod tests;

pub use script::{Entry, Reply, Script, ScriptError};
pub use server::{Options, RecordedRequest, Running, ServerError, fingerprint, start, start_with};
pub use wire::Provider;
