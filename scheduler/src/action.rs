//! Checking an Action and its Command before anything is queued: what a
//! worker needs must be there and sane, and what REAPI says a server must
//! refuse is refused here, with INVALID_ARGUMENT saying what was wrong.

use std::path::{Component, Path};
use std::time::Duration;

use corral_proto::protobuf;
use corral_proto::reapi::{Action, Command};

use crate::queue::PlatformKey;

/// The platform property naming the sandbox policy an action runs under
/// (the worker's `default_policy` when absent).
pub const POLICY_PROPERTY: &str = "corral-policy";

/// What is wrong with an action.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActionError {
    #[error("the Command has no arguments")]
    NoArguments,
    #[error("{field} {path:?} must be a relative path that stays in the working directory")]
    EscapingPath { field: &'static str, path: String },
    #[error("working_directory {path:?} must be a relative path inside the input root")]
    EscapingWorkingDirectory { path: String },
    #[error("timeout {seconds}s is negative")]
    NegativeTimeout { seconds: i64 },
    #[error("timeout {requested:?} is longer than this farm's maximum of {max:?}")]
    TimeoutTooLong { requested: Duration, max: Duration },
}

/// A relative path with no `..` and no root: everything a worker writes
/// or collects must stay under the working directory.
fn stays_inside(path: &str) -> bool {
    !path.is_empty()
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Checks the Command's arguments and every path it names.
// The REAPI 2.0 fields are deprecated but still what Bazel 4 sends.
#[allow(deprecated)]
pub fn check_command(command: &Command) -> Result<(), ActionError> {
    if command.arguments.is_empty() {
        return Err(ActionError::NoArguments);
    }
    let wd = &command.working_directory;
    if !wd.is_empty() && !stays_inside(wd) {
        return Err(ActionError::EscapingWorkingDirectory { path: wd.clone() });
    }
    let fields: [(&'static str, &Vec<String>); 3] = [
        ("output_paths", &command.output_paths),
        ("output_files", &command.output_files),
        ("output_directories", &command.output_directories),
    ];
    for (field, paths) in fields {
        for path in paths {
            // An output directory may be "" (the working directory itself).
            let whole_working_directory = path.is_empty() && field == "output_directories";
            if !whole_working_directory && !stays_inside(path) {
                return Err(ActionError::EscapingPath {
                    field,
                    path: path.clone(),
                });
            }
        }
    }
    Ok(())
}

/// The platform an action asks for: `Action.platform` (REAPI 2.2), else
/// the Command's (deprecated in 2.2, still what older clients send).
#[allow(deprecated)]
pub fn platform(action: &Action, command: &Command) -> PlatformKey {
    let chosen = action
        .platform
        .as_ref()
        .filter(|p| !p.properties.is_empty())
        .or(command.platform.as_ref());
    PlatformKey::new(
        chosen
            .into_iter()
            .flat_map(|p| p.properties.iter())
            .map(|p| (p.name.clone(), p.value.clone())),
    )
}

/// Every sandbox policy the action names, in the Action's platform and
/// in the Command's. Both are read whichever one [`platform`] queues on:
/// a worker that finds no policy in one looks in the other, so a policy
/// hidden in the platform not queued on must still be granted.
#[allow(deprecated)]
pub fn policies<'a>(action: &'a Action, command: &'a Command) -> impl Iterator<Item = &'a str> {
    [action.platform.as_ref(), command.platform.as_ref()]
        .into_iter()
        .flatten()
        .flat_map(|p| &p.properties)
        .filter(|p| p.name == POLICY_PROPERTY)
        .map(|p| p.value.as_str())
}

/// The timeout an action runs with: the client's, or `default` when it
/// set none (or zero). REAPI requires refusing one above the maximum.
pub fn timeout(
    requested: Option<&protobuf::Duration>,
    default: Duration,
    max: Duration,
) -> Result<Duration, ActionError> {
    let Some(requested) = requested else {
        return Ok(default);
    };
    if requested.seconds < 0 || requested.nanos < 0 {
        return Err(ActionError::NegativeTimeout {
            seconds: requested.seconds,
        });
    }
    let requested = corral_proto::time::std_duration(requested);
    if requested.is_zero() {
        return Ok(default);
    }
    if requested > max {
        return Err(ActionError::TimeoutTooLong { requested, max });
    }
    Ok(requested)
}

#[cfg(test)]
#[allow(deprecated)]
mod tests {
    use corral_proto::reapi::{platform::Property, Platform};

    use super::*;

    fn command(outputs: &[&str]) -> Command {
        Command {
            arguments: vec!["cc".into()],
            output_paths: outputs.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn sane_commands_pass() {
        check_command(&command(&["out/a.o", "./b", "dir/sub"])).unwrap();
        let mut c = command(&[]);
        c.output_directories = vec![String::new()];
        c.working_directory = "pkg".into();
        check_command(&c).unwrap();
    }

    #[test]
    fn escaping_and_absolute_outputs_are_refused_naming_the_field() {
        for bad in ["/etc/passwd", "../up", "a/../../b", ""] {
            let err = check_command(&command(&[bad])).unwrap_err();
            assert!(
                matches!(
                    err,
                    ActionError::EscapingPath {
                        field: "output_paths",
                        ..
                    }
                ),
                "{bad}"
            );
        }
        let mut c = command(&[]);
        c.output_files = vec!["/abs".into()];
        assert!(check_command(&c)
            .unwrap_err()
            .to_string()
            .contains("output_files"));
        let mut c = command(&[]);
        c.working_directory = "../x".into();
        assert!(matches!(
            check_command(&c),
            Err(ActionError::EscapingWorkingDirectory { .. })
        ));
        assert_eq!(
            check_command(&Command::default()),
            Err(ActionError::NoArguments)
        );
    }

    #[test]
    fn the_actions_platform_wins_over_the_commands() {
        let p = |v: &str| Platform {
            properties: vec![Property {
                name: "OSFamily".into(),
                value: v.into(),
            }],
        };
        let mut c = command(&[]);
        c.platform = Some(p("linux"));
        let mut a = Action::default();
        assert_eq!(platform(&a, &c).to_string(), "{OSFamily=linux}");
        a.platform = Some(p("freebsd"));
        assert_eq!(platform(&a, &c).to_string(), "{OSFamily=freebsd}");
        assert_eq!(
            platform(&Action::default(), &command(&[])).to_string(),
            "{}"
        );
    }

    #[test]
    fn policies_are_read_from_both_platforms() {
        let p = |pairs: &[(&str, &str)]| Platform {
            properties: pairs
                .iter()
                .map(|(name, value)| Property {
                    name: (*name).into(),
                    value: (*value).into(),
                })
                .collect(),
        };
        let action = Action {
            platform: Some(p(&[("OSFamily", "linux"), (POLICY_PROPERTY, "default")])),
            ..Default::default()
        };
        let mut c = command(&[]);
        c.platform = Some(p(&[(POLICY_PROPERTY, "network")]));
        assert_eq!(
            platform(&action, &c).to_string(),
            "{OSFamily=linux, corral-policy=default}"
        );
        let asked: Vec<&str> = policies(&action, &c).collect();
        assert_eq!(asked, ["default", "network"]);
        assert_eq!(policies(&Action::default(), &command(&[])).count(), 0);
    }

    #[test]
    fn timeouts_default_cap_and_refuse() {
        let d = Duration::from_secs(900);
        let max = Duration::from_secs(3600);
        let secs = |s| protobuf::Duration {
            seconds: s,
            nanos: 0,
        };
        assert_eq!(timeout(None, d, max), Ok(d));
        assert_eq!(timeout(Some(&secs(0)), d, max), Ok(d));
        assert_eq!(
            timeout(Some(&secs(60)), d, max),
            Ok(Duration::from_secs(60))
        );
        assert!(matches!(
            timeout(Some(&secs(7200)), d, max),
            Err(ActionError::TimeoutTooLong { .. })
        ));
        assert!(matches!(
            timeout(Some(&secs(-1)), d, max),
            Err(ActionError::NegativeTimeout { .. })
        ));
    }
}
