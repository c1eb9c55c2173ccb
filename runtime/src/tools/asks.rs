//! Questions a tool asks the user in the middle of a call: MCP elicitation
//! (`elicitation/create`) from a bridged server while a run's tool call is
//! in flight.
//!
//! The run engine executes each tool call inside [`ORIGIN`], which names
//! the run, the call and a channel back to the engine. A bridged server's
//! connection notes the origins of its calls in flight; when the server asks
//! a question, the connection hands it to the one run it can belong to, and
//! the engine stores it, shows the run as `requires_action`, and waits for
//! the user's answer while the call stays open.

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// A question for the run's user, as the server sent it.
#[derive(Debug)]
pub struct Ask {
    /// The bridged server that asks (its name).
    pub server: String,
    /// The tool call in flight that the question belongs to.
    pub call_id: String,
    /// The `elicitation/create` params: `mode`, `message`,
    /// `requestedSchema` (form mode) or `url` (URL mode).
    pub params: Value,
    /// Where the answer goes: an `ElicitResult` (`action`, `content`).
    pub answer: oneshot::Sender<Value>,
}

/// Where a tool call comes from: set by the run engine around each call.
#[derive(Debug, Clone)]
pub struct CallOrigin {
    /// The run that makes the call.
    pub run: Uuid,
    /// Its tool call id.
    pub call_id: String,
    /// The run's user.
    pub user: Uuid,
    /// Questions go to the run's worker here.
    pub asks: mpsc::Sender<Ask>,
}

tokio::task_local! {
    /// The origin of the tool call being executed on this task, if a run
    /// makes it.
    pub static ORIGIN: CallOrigin;
}

/// The origin of the current task's tool call, if a run makes it.
pub fn current() -> Option<CallOrigin> {
    ORIGIN.try_with(Clone::clone).ok()
}
