//! `/action/<instance>/<hash>-<size>`: an Action as storage holds it:
//! the Action, its Command (arguments, environment, platform, outputs),
//! its input root as a tree to browse (`/tree/<instance>/<hash>-<size>`,
//! one Directory a page), and its cached result if there is one.

use std::sync::Arc;

use corral_auth::Permission;
use corral_metrics::axum::extract::{Path, State};
use corral_metrics::axum::http::{Extensions, StatusCode};
use corral_proto::reapi::{Action, Command, Digest, Directory};
use maud::{html, Markup};

use super::home::{platform_text, shown_instance};
use super::html::{blob_link, digest_text, layout, tree_link};
use super::operation::result_section;
use super::{instance_and_digest, Page, Refusal, Web, SHOW_MAX_BYTES};
use crate::operation::Inline;

pub async fn page(
    State(web): State<Arc<Web>>,
    Path(path): Path<String>,
    extensions: Extensions,
) -> Page {
    let caller = web.caller(&extensions)?;
    let (instance, digest) = instance_and_digest(&path)?;
    web.check(&caller, Permission::CasRead, &instance)?;
    let action: Action = decode(
        &web.read(&instance, &digest, SHOW_MAX_BYTES).await?,
        "Action",
    )?;
    let command_digest = action.command_digest.clone().unwrap_or_default();
    let command: Command = decode(
        &web.read(&instance, &command_digest, SHOW_MAX_BYTES).await?,
        "Command",
    )?;
    let root = match &action.input_root_digest {
        Some(d) => listing(&web, &instance, d).await,
        None => html! { p { "No input root." } },
    };
    // A cached result only to a caller who may read the Action Cache.
    let cached = if web
        .authorizer
        .allows(&caller, Permission::AcRead, &instance)
    {
        let inline = Inline {
            stdout: true,
            stderr: true,
        };
        match web
            .storage
            .cached_result(&instance, 0, &digest, inline)
            .await
        {
            Ok(Some(result)) => result_section(&web, &instance, &result).await,
            Ok(None) => {
                html! { h2 { "Cached result" } p { "None: the Action Cache has no result for it." } }
            }
            Err(status) => {
                html! { h2 { "Cached result" } p.refusal { (Refusal::of(&status).why) } }
            }
        }
    } else {
        html! {}
    };
    let (platform, outputs) = (platform_of(&action, &command), outputs_of(&command));
    Ok(layout(
        "Action",
        html! {
            table {
                tr { th { "instance name" } td { code { (shown_instance(&instance)) } } }
                tr { th { "digest" } td { (blob_link(&instance, &digest)) } }
                tr { th { "command" } td { (blob_link(&instance, &command_digest)) } }
                tr { th { "timeout" } td { @match &action.timeout { Some(t) => { (t.seconds) "s" }, None => { "the scheduler's default" } } } }
                tr { th { "do not cache" } td { (action.do_not_cache) } }
                tr { th { "platform" } td { code { (platform_text(platform)) } } }
            }
            h2 { "Command" }
            pre.command { (shell_line(&command.arguments)) }
            @if !command.working_directory.is_empty() {
                p { "Working directory: " code { (command.working_directory) } }
            }
            h3 { "Environment" }
            @if command.environment_variables.is_empty() {
                p { "None." }
            } @else {
                table {
                    @for v in &command.environment_variables {
                        tr { th { code { (v.name) } } td { code { (v.value) } } }
                    }
                }
            }
            h3 { "Outputs asked for" }
            ul {
                @for p in &outputs {
                    li { code { (p) } }
                }
            }
            h2 { "Input root" }
            (root)
            (cached)
        },
    ))
}

/// `/tree/<instance>/<hash>-<size>`: one Directory of an input root.
pub async fn tree(
    State(web): State<Arc<Web>>,
    Path(path): Path<String>,
    extensions: Extensions,
) -> Page {
    let caller = web.caller(&extensions)?;
    let (instance, digest) = instance_and_digest(&path)?;
    web.check(&caller, Permission::CasRead, &instance)?;
    Ok(layout(
        &format!("Directory {}", digest_text(&digest)),
        listing(&web, &instance, &digest).await,
    ))
}

/// The entries of the Directory `digest`: subdirectories link to their
/// own page, files to their download.
async fn listing(web: &Web, instance: &str, digest: &Digest) -> Markup {
    let directory: Result<Directory, Refusal> =
        match web.read(instance, digest, SHOW_MAX_BYTES).await {
            Ok(data) => decode(&data, "Directory"),
            Err(refusal) => Err(refusal),
        };
    let directory = match directory {
        Ok(d) => d,
        Err(refusal) => return html! { p.refusal { (refusal.why) } },
    };
    html! {
        @if directory.directories.is_empty() && directory.files.is_empty() && directory.symlinks.is_empty() {
            p { "Empty." }
        } @else {
            table {
                tr { th { "name" } th { "kind" } th { "digest" } }
                @for d in &directory.directories {
                    tr {
                        td { @if let Some(dd) = &d.digest { (tree_link(instance, dd, &format!("{}/", d.name))) } }
                        td { "directory" }
                        td { @if let Some(dd) = &d.digest { code { (digest_text(dd)) } } }
                    }
                }
                @for f in &directory.files {
                    tr {
                        td { code { (f.name) } }
                        td { (if f.is_executable { "executable file" } else { "file" }) }
                        td { @if let Some(fd) = &f.digest { (blob_link(instance, fd)) } }
                    }
                }
                @for s in &directory.symlinks {
                    tr { td { code { (s.name) } } td { "symlink" } td { code { "→ " (s.target) } } }
                }
            }
        }
    }
}

/// The Action's platform, else the Command's (REAPI before 2.2).
#[allow(deprecated)]
fn platform_of<'a>(
    action: &'a Action,
    command: &'a Command,
) -> Option<&'a corral_proto::reapi::Platform> {
    action.platform.as_ref().or(command.platform.as_ref())
}

/// The output paths asked for, as REAPI 2.1 or before it.
#[allow(deprecated)]
fn outputs_of(command: &Command) -> Vec<&String> {
    command
        .output_paths
        .iter()
        .chain(&command.output_files)
        .chain(&command.output_directories)
        .collect()
}

fn decode<M: prost::Message + Default>(data: &[u8], what: &str) -> Result<M, Refusal> {
    M::decode(data).map_err(|_| {
        Refusal::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the blob is not a {what}"),
        )
    })
}

/// `arguments` as one shell line: each quoted when it holds more than
/// the characters a shell leaves alone, to paste into a terminal.
fn shell_line(arguments: &[String]) -> String {
    arguments
        .iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_quoted_for_a_shell() {
        let args = ["cc", "-o", "a b", "it's", ""].map(str::to_owned);
        assert_eq!(shell_line(&args), "cc -o 'a b' 'it'\\''s' ''");
    }
}
