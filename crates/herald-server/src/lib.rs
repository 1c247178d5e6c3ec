//! Herald's server, everything `herald serve` runs: the HTTP API, the operator dashboard,
//! `/metrics`, retention, the accept loop, configuration, and the server that ties store,
//! engine, API and (with `--sandbox`) the payment sandbox together. The sandbox is its own
//! crate (`herald-sandbox`), and so is the HTTP edge the API shares with it (`herald-http`).
//! The `herald` binary parses arguments and calls this; the bench (`herald-bench`) and the
//! demo (`herald-demo`) start it in process.
pub mod api;
pub mod clock;
pub mod config;
pub mod dashboard;
pub mod http;
pub mod metrics;
pub mod retention;
/// The payment sandbox lives in its own crate; re-exported for `serve --sandbox` and the demo.
pub use herald_sandbox as sandbox;
pub mod server;
