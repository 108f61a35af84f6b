//! How the read commands print: a table for people, JSON for programs.

use anyhow::Result;
use clap::ValueEnum;

#[derive(Copy, Clone, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

/// Prints `value` as pretty JSON, or through `table`.
pub fn print<T: serde::Serialize>(output: Output, value: &T, table: impl FnOnce(&T)) -> Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Table => table(value),
    }
    Ok(())
}
