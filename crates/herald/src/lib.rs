//! Herald, the binary's library half: the HTTP API, the payment sandbox, the server that
//! ties store, engine and API together, configuration, the CLI commands, and `herald bench`.
//! `main.rs` only parses arguments.
pub mod api;
pub mod bench;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod demo;
pub mod http;
pub mod metrics;
pub mod retention;
pub mod sandbox;
pub mod server;
