//! The `herald` command's work, one module per command: argument structs and the code that
//! calls the libraries (`herald-server`, `herald-bench`, `herald-demo`). A library beside
//! `main.rs` so the binary's tests can drive a command's parts in process (`listen`'s router).
pub mod cmd;
