//! Herald, the binary's library half: the HTTP API, the server that ties store, engine and
//! API together, configuration, and the CLI commands. `main.rs` only parses arguments.
pub mod api;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod server;
