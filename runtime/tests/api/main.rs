//! API tests: each starts the real server against a fresh database and talks
//! HTTP to it, once on SQLite and once on PostgreSQL.

mod common;
#[path = "../support/build.rs"]
mod support;
#[path = "../support/vendor.rs"]
mod vendor;

mod agents;
mod auth;
mod automation;
mod console;
mod conversations;
mod egress;
mod errors;
mod hardening;
mod mcp;
mod models;
mod oauth;
mod openai;
mod plugins;
mod runs;
mod tenancy;
mod tools;
