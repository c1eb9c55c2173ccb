//! Conversations: threads bound to an agent, holding ordered messages.

pub mod model;
pub mod repo;
pub mod routes;
pub mod service;

pub use service::ConversationService;
