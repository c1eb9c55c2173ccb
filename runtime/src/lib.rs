//! Orchestra, the host: HTTP API, storage, and (in later modules) the run
//! engine, the tool sandbox and the MCP bridge. See `ARCHITECTURE.md`.

pub mod agents;
pub mod allocator;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod conversations;
pub mod crypto;
pub mod db;
pub mod egress;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod keys;
pub mod mcp;
pub mod models;
pub mod oauth;
pub mod openai;
pub mod pagination;
pub mod plugins;
pub mod providers;
pub mod runs;
pub mod sandbox;
pub mod schedules;
pub mod schema;
pub mod secrets;
pub mod server;
pub mod settings;
pub mod telemetry;
pub mod template;
pub mod tools;
pub mod triggers;
pub mod users;
pub mod webhooks;
