//! What to run: the command, its environment, and where its files are.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// One command to run in the sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// argv; `argv[0]` is the program: a path (absolute, or relative to the
    /// working directory) or a name looked up in the command's own PATH.
    pub argv: Vec<OsString>,
    /// The whole environment. Nothing is inherited from the caller.
    pub env: Vec<(OsString, OsString)>,
    /// Host directory holding the input root; it appears at the policy's
    /// working directory, writable.
    pub input_root: PathBuf,
    /// Directory to start in, relative to the input root.
    pub working_dir: PathBuf,
    /// Host files that receive stdout and stderr (created or truncated).
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// Wall-clock limit; `None` for no limit.
    pub timeout: Option<Duration>,
}

/// Longest argument or `NAME=value` environment string execve takes,
/// without its NUL: Linux's MAX_ARG_STRLEN (32 pages) less one. A longer
/// one fails the exec with E2BIG after the whole sandbox was set up.
pub const MAX_ARG_STRLEN: usize = 131_071;

/// Why a command is refused before anything runs.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("the command has no arguments")]
    NoArguments,
    #[error("{what} contains a NUL byte")]
    Nul { what: &'static str },
    #[error(
        "{what} of {bytes} bytes is longer than the {MAX_ARG_STRLEN} bytes execve takes \
         (MAX_ARG_STRLEN)"
    )]
    TooLong { what: &'static str, bytes: usize },
    #[error("environment variable name {name:?} is empty or contains '='")]
    BadEnvName { name: OsString },
    #[error("working directory {path} must be relative and stay inside the input root")]
    EscapingWorkingDir { path: PathBuf },
    #[error("input root {path} is not a directory")]
    InputRootNotDirectory { path: PathBuf },
}

impl Command {
    /// Checks what the sandbox relies on: an argv, C-compatible strings, a
    /// working directory that cannot leave the input root, an input root
    /// that is a directory.
    pub fn validate(&self) -> Result<(), CommandError> {
        self.validate_fields()?;
        if !self.input_root.is_dir() {
            return Err(CommandError::InputRootNotDirectory {
                path: self.input_root.clone(),
            });
        }
        Ok(())
    }

    /// [`Command::validate`] without looking at the file system: what the
    /// command's caller alone answers for.
    pub fn validate_fields(&self) -> Result<(), CommandError> {
        if self.argv.is_empty() {
            return Err(CommandError::NoArguments);
        }
        use std::os::unix::ffi::OsStrExt;
        let has_nul = |s: &std::ffi::OsStr| s.as_bytes().contains(&0);
        if self.argv.iter().any(|a| has_nul(a)) {
            return Err(CommandError::Nul {
                what: "an argument",
            });
        }
        if let Some(arg) = self.argv.iter().find(|a| a.len() > MAX_ARG_STRLEN) {
            return Err(CommandError::TooLong {
                what: "an argument",
                bytes: arg.len(),
            });
        }
        for (name, value) in &self.env {
            let bytes = name.len() + 1 + value.len();
            if bytes > MAX_ARG_STRLEN {
                return Err(CommandError::TooLong {
                    what: "an environment variable",
                    bytes,
                });
            }
            if name.is_empty() || name.as_bytes().contains(&b'=') {
                return Err(CommandError::BadEnvName { name: name.clone() });
            }
            if has_nul(name) || has_nul(value) {
                return Err(CommandError::Nul {
                    what: "an environment variable",
                });
            }
        }
        if !stays_inside(&self.working_dir) || has_nul(self.working_dir.as_os_str()) {
            return Err(CommandError::EscapingWorkingDir {
                path: self.working_dir.clone(),
            });
        }
        Ok(())
    }
}

/// True for a relative path without `..` components.
pub fn stays_inside(path: &Path) -> bool {
    path.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> Command {
        Command {
            argv: vec!["true".into()],
            env: vec![],
            input_root: std::env::temp_dir(),
            working_dir: PathBuf::new(),
            stdout: "/dev/null".into(),
            stderr: "/dev/null".into(),
            timeout: None,
        }
    }

    #[test]
    fn a_plain_command_is_valid() {
        command().validate().unwrap();
    }

    #[test]
    fn escaping_working_directories_are_refused() {
        for bad in ["..", "a/../..", "/etc", "a/../../b"] {
            let mut c = command();
            c.working_dir = bad.into();
            assert!(
                matches!(c.validate(), Err(CommandError::EscapingWorkingDir { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn nul_bytes_and_bad_env_names_are_refused() {
        let mut c = command();
        c.argv.push("a\0b".into());
        assert!(c.validate().is_err());
        let mut c = command();
        c.env.push(("A=B".into(), "x".into()));
        assert!(c.validate().is_err());
        let mut c = command();
        c.argv.clear();
        assert!(matches!(c.validate(), Err(CommandError::NoArguments)));
    }

    /// Found by the runner's crafted requests: these passed and failed
    /// the exec with E2BIG once the whole sandbox was set up.
    #[test]
    fn strings_longer_than_execve_takes_are_refused() {
        let mut c = command();
        c.argv.push("a".repeat(MAX_ARG_STRLEN).into());
        c.env
            .push(("A".into(), "v".repeat(MAX_ARG_STRLEN - 2).into()));
        c.validate().unwrap();
        let mut c = command();
        c.argv.push("a".repeat(MAX_ARG_STRLEN + 1).into());
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "an argument of 131072 bytes is longer than the 131071 bytes execve takes \
             (MAX_ARG_STRLEN)"
        );
        let mut c = command();
        c.env
            .push(("A".into(), "v".repeat(MAX_ARG_STRLEN - 1).into()));
        assert!(matches!(
            c.validate(),
            Err(CommandError::TooLong {
                what: "an environment variable",
                bytes: 131_072
            })
        ));
    }
}
