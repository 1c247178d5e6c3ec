//! The CLI commands other than argument parsing: one module per command.
use anyhow::Context as _;
pub mod bench;
pub mod capture;
pub mod demo;
pub mod listen;
pub mod migrate;
pub mod purge;
pub mod rekey;
pub mod send;
pub mod serve;
pub mod sign;
pub mod token;
pub mod verify;

/// Reads a value given as literal text, `@FILE`, or `-` for standard input.
pub fn read_arg_text(value: &str) -> anyhow::Result<String> {
    if value == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("cannot read standard input")?;
        Ok(s)
    } else if let Some(path) = value.strip_prefix('@') {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))
    } else {
        Ok(value.to_string())
    }
}
