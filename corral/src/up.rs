//! `corral up`: a whole farm on one machine, nothing to configure.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Address clients connect to (REAPI: Execution, CAS, AC, ByteStream).
    #[arg(long, default_value = "127.0.0.1:8980")]
    pub listen: SocketAddr,
    /// Where storage, the worker's cache and build directories live.
    #[arg(long, default_value = "./corral-data")]
    pub data_dir: PathBuf,
    /// Build slots; default one per core.
    #[arg(long)]
    pub workers: Option<usize>,
}

/// What `corral up` will start, and whether it exists yet.
const PARTS: &[(&str, Option<u32>)] = &[
    ("storage (CAS, Action Cache, ByteStream)", Some(4)),
    (
        "scheduler (Execution, Operations, worker protocol)",
        Some(5),
    ),
    ("worker", Some(6)),
    ("runner and sandbox", Some(3)),
];

pub fn run(args: &UpArgs) -> anyhow::Result<ExitCode> {
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    eprintln!(
        "corral up: would serve {} with data in {} and {workers} build slot(s)",
        args.listen,
        args.data_dir.display()
    );
    for (part, issue) in PARTS {
        match issue {
            Some(n) => eprintln!("  {part}: not implemented yet (issue #{n})"),
            None => eprintln!("  {part}: ready"),
        }
    }
    eprintln!("corral up: no farm was started, because its daemons are not built yet");
    Ok(ExitCode::from(2))
}
