//! `ipipd probe`: load every program (the verifier runs), report, unload.

use anyhow::Result;
use clap::Args;
use dataplane_user::loader;

use super::{Output, output::print};

#[derive(Args)]
pub struct Probe {
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(serde::Serialize)]
struct Row {
    name: &'static str,
    id: u32,
    verified_insns: Option<u32>,
    xlated_bytes: Option<u32>,
}

impl Probe {
    pub fn run(self) -> Result<()> {
        let mut ebpf = loader::open_object()?;
        let rows: Vec<Row> = loader::load_all(&mut ebpf)?
            .iter()
            .map(|p| Row {
                name: p.name,
                id: p.id,
                verified_insns: p.verified_insns,
                xlated_bytes: p.xlated_bytes,
            })
            .collect();
        print(self.output, &rows, |rows| {
            println!(
                "{:<12} {:>6} {:>14} {:>12}",
                "PROGRAM", "ID", "VERIFIED_INSNS", "XLATED_BYTES"
            );
            for p in rows {
                let o = |v: Option<u32>| v.map_or("-".into(), |v| v.to_string());
                println!(
                    "{:<12} {:>6} {:>14} {:>12}",
                    p.name,
                    p.id,
                    o(p.verified_insns),
                    o(p.xlated_bytes)
                );
            }
        })
    }
}
