//! Agents: definitions (model, instructions, tools), revisions, soft delete
//! and cloning.

pub mod model;
pub mod repo;
pub mod routes;
pub mod service;

pub use service::AgentService;
