//! Herald, the binary's library half: the HTTP API, the operator dashboard, the server that
//! ties store, engine, API and (with `--sandbox`) the payment sandbox together,
//! configuration, the CLI commands, and `herald bench`. The sandbox is its own crate
//! (`herald-sandbox`), and so is the HTTP edge the API shares with it (`herald-http`).
//! `main.rs` only parses arguments.
pub mod api;
pub mod bench;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod dashboard;
pub mod demo;
pub mod http;
pub mod metrics;
pub mod retention;
/// The payment sandbox lives in its own crate; re-exported for `serve --sandbox` and the demo.
pub use herald_sandbox as sandbox;
pub mod server;
