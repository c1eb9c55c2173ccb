//! API tests: each starts the real server against a fresh database and talks
//! HTTP to it, once on SQLite and once on PostgreSQL.

mod common;

mod agents;
mod auth;
mod conversations;
mod errors;
mod tenancy;
mod tools;
