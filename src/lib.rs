//! `mcp-u2m-gateway`: one gateway in front of OAuth-protected MCP servers.
//!
//! An operator lists upstream MCP servers as routes in `gateway.toml`, each a path prefix
//! mapped to an upstream base URL. MCP clients talk to the gateway without credentials of
//! their own; the gateway adds the route's upstream token and streams both MCP transports
//! (Streamable HTTP and the legacy HTTP+SSE) without buffering.
//!
//! A request travels: pingora listener → [`route`] table (reserved control paths first, then
//! the longest route prefix) → either the [`control`] plane (the UI, sign-in, admin API,
//! health, metrics) or the [`proxy`], which checks the caller, takes the route's token from
//! its [`token`] source and forwards. Event-stream `GET`s run through the proxy's own stream
//! relay, which rewrites the legacy `endpoint` event and sends keepalives; everything else
//! streams through pingora's proxy loop. [`config`] turns `gateway.toml` (or the single-upstream environment) into a
//! validated `Config`, and [`gateway`] binds the sockets and runs pingora.

pub mod cli;
pub mod config;
mod control;
mod gateway;
mod metrics;
mod oauth;
mod plugin;
mod proxy;
mod route;
mod secret;
mod store;
mod token;

// For the fuzz targets in fuzz/ and the corpus replay test; not a stable API.
#[doc(hidden)]
pub mod fuzzing;

pub use config::{Config, ConfigError};
pub use gateway::{Gateway, RunningGateway, StartError};
