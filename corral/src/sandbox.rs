//! `corral sandbox`: tools around sandbox policies.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use corral_sandbox::Policy;

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Check that policy files parse and are valid; prints each policy as
    /// it will be applied, defaults filled in.
    CheckPolicy {
        /// Policy files (e.g. policies/*.toml).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

pub fn run(command: SandboxCommand) -> anyhow::Result<ExitCode> {
    match command {
        SandboxCommand::CheckPolicy { files } => {
            let mut failed = false;
            for file in files {
                match Policy::load(&file) {
                    Ok(policy) => println!("{}: ok\n{policy:#?}", file.display()),
                    Err(err) => {
                        failed = true;
                        let cause = std::error::Error::source(&err)
                            .map(|s| format!(": {s}"))
                            .unwrap_or_default();
                        eprintln!("{err}{cause}");
                    }
                }
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
