//! `corral drain`: take workers out of service without losing an action,
//! through the scheduler's BuildQueueState calls (the same ones
//! bb_scheduler serves).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use corral_proto::buildqueuestate::build_queue_state_client::BuildQueueStateClient;
use corral_proto::buildqueuestate::{
    AddOrRemoveDrainRequest, ListDrainsRequest, TerminateWorkersRequest,
};

use crate::shutdown;

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The scheduler's endpoint; `https://` needs --ca.
    #[arg(long, default_value = "http://127.0.0.1:8980")]
    scheduler: String,
    /// CA certificates (PEM) that sign the scheduler's certificate: turns
    /// on TLS, like `[client_tls] ca`.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// A client certificate (PEM) to show the scheduler (mTLS); needs
    /// --private-key and --ca.
    #[arg(long, value_name = "FILE", requires = "private_key", requires = "ca")]
    certificate: Option<PathBuf>,
    /// The private key of --certificate (PEM).
    #[arg(long, value_name = "FILE", requires = "certificate")]
    private_key: Option<PathBuf>,
    /// A file holding a bearer token sent with each call; needs --ca, so
    /// that it never travels in the clear.
    #[arg(long, value_name = "FILE", requires = "ca")]
    token_file: Option<PathBuf>,
    /// Remove the drain of exactly this pattern instead of adding one.
    #[arg(long, conflicts_with = "list")]
    remove: bool,
    /// List the drains.
    #[arg(long)]
    list: bool,
    /// Workers to drain: KEY=VALUE pairs their worker id must all have,
    /// e.g. `hostname=build-7` (none: every worker). Without --remove or
    /// --list, waits until none of them runs an action: then they can be
    /// stopped.
    #[arg(value_name = "KEY=VALUE")]
    pattern: Vec<String>,
}

fn parse_pattern(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
            _ => bail!("{pair:?} is not KEY=VALUE"),
        })
        .collect()
}

/// The client TLS the flags ask for, checked against the endpoint.
fn client_tls(args: &DrainArgs) -> anyhow::Result<Option<corral_auth::tls::ClientTls>> {
    let tls = args.ca.as_ref().map(|ca| corral_auth::tls::ClientTls {
        ca: ca.clone(),
        certificate: args.certificate.clone(),
        private_key: args.private_key.clone(),
        token_file: args.token_file.clone(),
    });
    match (args.scheduler.starts_with("https://"), &tls) {
        (true, None) => bail!("--scheduler {} needs --ca", args.scheduler),
        (false, Some(_)) => bail!(
            "--scheduler {} is plaintext but --ca is given: use https://",
            args.scheduler
        ),
        _ => Ok(tls),
    }
}

pub fn run(args: DrainArgs) -> anyhow::Result<ExitCode> {
    let pattern = parse_pattern(&args.pattern)?;
    let connector = corral_auth::channel::Connector::new(client_tls(&args)?.as_ref())?;
    shutdown::runtime()?.block_on(async move {
        let channel = connector
            .endpoint("scheduler", &args.scheduler)?
            .connect()
            .await
            .with_context(|| format!("connecting to {}", args.scheduler))?;
        let channel = connector.wrap(channel);
        let mut admin = BuildQueueStateClient::new(channel);
        if args.list {
            let drains = admin
                .list_drains(ListDrainsRequest::default())
                .await
                .context("listing drains")?
                .into_inner()
                .drains;
            for drain in drains {
                let pairs: Vec<String> = drain
                    .worker_id_pattern
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let since = drain.created_timestamp.map_or(0, |t| t.seconds);
                println!("{}\t(since unix time {since})", pairs.join(" "));
            }
        } else if args.remove {
            admin
                .remove_drain(AddOrRemoveDrainRequest {
                    size_class_queue_name: None,
                    worker_id_pattern: pattern,
                })
                .await
                .context("removing the drain")?;
            eprintln!("corral drain: removed; the workers take work again");
        } else {
            eprintln!("corral drain: draining; waiting for the workers to finish what they run");
            admin
                .terminate_workers(TerminateWorkersRequest {
                    worker_id_pattern: pattern,
                })
                .await
                .context("draining")?;
            eprintln!("corral drain: the workers are idle and take no new work");
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_key_value_pairs() {
        let pattern = parse_pattern(&["hostname=a".into(), "slot=3".into()]).unwrap_or_default();
        assert_eq!(pattern.get("hostname").map(String::as_str), Some("a"));
        assert_eq!(pattern.len(), 2);
        assert!(parse_pattern(&["nokey".into()]).is_err());
        assert!(parse_pattern(&["=v".into()]).is_err());
    }

    #[test]
    fn the_scheduler_endpoint_must_agree_with_ca() {
        let args = |scheduler: &str, ca: Option<&str>| DrainArgs {
            scheduler: scheduler.to_owned(),
            ca: ca.map(PathBuf::from),
            certificate: None,
            private_key: None,
            token_file: None,
            remove: false,
            list: false,
            pattern: Vec::new(),
        };
        let err = client_tls(&args("https://s:1", None)).unwrap_err();
        assert_eq!(err.to_string(), "--scheduler https://s:1 needs --ca");
        assert!(client_tls(&args("http://s:1", Some("ca.crt"))).is_err());
        assert!(client_tls(&args("http://s:1", None)).unwrap().is_none());
        let tls = client_tls(&args("https://s:1", Some("ca.crt"))).unwrap();
        assert_eq!(tls.unwrap().ca, PathBuf::from("ca.crt"));
    }
}
