//! Users: accounts, roles and permissions, sessions (JWT access tokens and
//! rotating refresh tokens) and API keys.

mod cache;
pub mod credentials;
pub mod model;
pub mod repo;
pub mod routes;
pub mod service;
pub mod session;
pub mod throttle;

pub use service::{TokenPolicy, UserService};
