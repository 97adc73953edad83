//! `corral sandbox`: try the sandbox by hand, and check policies.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use corral_sandbox::{Command, Policy, Sandbox};

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Run one command in the sandbox, like bwrap: only the environment
    /// given with --env, the input root at the policy's working directory.
    Run {
        /// A policy file, or the name of a built-in one (default,
        /// hermetic, network).
        #[arg(long, default_value = "default")]
        policy: String,
        /// Host directory to use as the input root (writable inside).
        /// Default: a fresh empty directory, removed afterwards.
        #[arg(long)]
        root: Option<PathBuf>,
        /// Directory to start in, relative to the input root.
        #[arg(long)]
        workdir: Option<PathBuf>,
        /// An environment variable for the command, NAME=VALUE; repeat.
        #[arg(long = "env", value_name = "NAME=VALUE")]
        env: Vec<String>,
        /// Kill the command after this many seconds.
        #[arg(long)]
        timeout: Option<f64>,
        /// Print the outcome as JSON on stderr after the command's output.
        #[arg(long)]
        json: bool,
        /// Print the undeclared-input report on stderr after the command's
        /// output: the files it opened outside its input root (the policy's
        /// `report.undeclared_inputs` must be on, as in the built-in ones).
        #[arg(long)]
        report: bool,
        /// The command and its arguments.
        #[arg(required = true, last = true)]
        command: Vec<OsString>,
    },
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
        SandboxCommand::Run {
            policy,
            root,
            workdir,
            env,
            timeout,
            json,
            report,
            command,
        } => run_one(
            &policy,
            root,
            workdir,
            &env,
            timeout,
            Print { json, report },
            command,
        ),
        SandboxCommand::CheckPolicy { files } => Ok(check_policies(&files)),
    }
}

fn load_policy(spec: &str) -> anyhow::Result<Policy> {
    if let Some(policy) = Policy::builtin(spec) {
        return Ok(policy?);
    }
    Ok(Policy::load(Path::new(spec))?)
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(what: &str) -> anyhow::Result<TempDir> {
    // A fresh random name (a pid repeats across containers sharing /tmp),
    // created here, so it is ours alone.
    let id = corral_proto::ids::uuid_v4().context("naming a temporary directory")?;
    let dir = std::env::temp_dir().join(format!("corral-sandbox-{what}-{id}"));
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(TempDir(dir))
}

/// What `sandbox run` prints on stderr after the command's output.
#[derive(Debug, Clone, Copy)]
struct Print {
    json: bool,
    report: bool,
}

fn run_one(
    policy: &str,
    root: Option<PathBuf>,
    workdir: Option<PathBuf>,
    env: &[String],
    timeout: Option<f64>,
    print: Print,
    argv: Vec<OsString>,
) -> anyhow::Result<ExitCode> {
    let mut policy = load_policy(policy)?;
    // Collecting the undeclared-input report costs a fanotify group, a
    // mark per mount and a round trip with init: only when it is printed.
    policy.report.undeclared_inputs &= print.report || print.json;
    let sandbox = Sandbox::for_one_run(policy).context("preparing the sandbox")?;
    for warning in sandbox.warnings() {
        tracing::warn!("{warning}");
    }
    let env = env
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => Ok((OsString::from(k), OsString::from(v))),
            None => bail!("--env {kv:?} is not NAME=VALUE"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let timeout = match timeout {
        Some(t) if t.is_finite() && t > 0.0 => Some(Duration::from_secs_f64(t)),
        Some(t) => bail!("--timeout must be a positive number of seconds, got {t}"),
        None => None,
    };
    let scratch_root;
    let input_root = match root {
        Some(root) => root,
        None => {
            scratch_root = temp_dir("root")?;
            // The action runs as another host uid: the root becomes its
            // (never world-writable).
            let mapping = sandbox.mapping();
            mapping.hand_over(&scratch_root.0, mapping.default_ids())?;
            scratch_root.0.clone()
        }
    };
    let outputs = temp_dir("out")?;
    let command = Command {
        argv,
        env,
        input_root,
        working_dir: workdir.unwrap_or_default(),
        stdout: outputs.0.join("stdout"),
        stderr: outputs.0.join("stderr"),
        timeout,
    };
    let outcome = sandbox.run(&command)?;
    if let Some(excess) = &outcome.disk_excess {
        tracing::warn!("the action {excess} and was killed");
    }
    // With subordinate ids, what the action left is its uid's: give it
    // back, so the caller can read and remove it.
    let mapping = sandbox.mapping();
    mapping.reclaim(&command.input_root, mapping.default_ids())?;
    std::io::stdout().write_all(&std::fs::read(&command.stdout)?)?;
    std::io::stderr().write_all(&std::fs::read(&command.stderr)?)?;
    if print.report {
        let text = outcome.undeclared_inputs.text().unwrap_or_else(|| {
            "undeclared inputs: off (the policy's report.undeclared_inputs is false)\n".to_owned()
        });
        eprint!("{text}");
    }
    if print.json {
        let text = serde_json::to_string_pretty(&outcome)?;
        eprintln!("{text}");
    }
    let code = outcome.exit_code().clamp(0, 255) as u8;
    Ok(ExitCode::from(code))
}

fn check_policies(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for file in files {
        match Policy::load(file) {
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
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
