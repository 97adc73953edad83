//! The systemd units: `systemd-analyze verify`, and the paths they give the configs.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

/// Runs `systemd-analyze verify` on `units` (paths); its exit status and
/// everything it printed. None when it is not installed.
fn systemd_verify(test: &str, units: &[PathBuf]) -> Option<(bool, String)> {
    let output = match Command::new("systemd-analyze")
        .arg("verify")
        .args(units)
        .output()
    {
        Ok(output) => output,
        Err(e) => {
            corral_testkit::skip(
                test,
                &format!("systemd-analyze cannot run ({e}): Debian package systemd"),
            );
            return None;
        }
    };
    let text = corral_e2e::output_text(&output);
    Some((output.status.success(), text))
}

/// Copies the units into `dir` with ExecStart's /usr/local/bin/corral
/// replaced by the built binary: verify refuses a unit whose program is
/// missing.
fn units_with_built_binary(dir: &Path, edit: impl Fn(&str, String) -> String) -> Vec<PathBuf> {
    let binary = corral_e2e::corral_binary();
    DAEMONS
        .iter()
        .map(|daemon| {
            let text = read(&unit_path(daemon));
            assert!(
                text.contains("ExecStart=/usr/local/bin/corral "),
                "corral-{daemon}.service starts /usr/local/bin/corral"
            );
            let text = text.replace(
                "ExecStart=/usr/local/bin/corral ",
                &format!("ExecStart={} ", binary.display()),
            );
            let path = dir.join(format!("corral-{daemon}.service"));
            std::fs::write(&path, edit(daemon, text)).unwrap();
            path
        })
        .collect()
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let test = "systemd_units_pass_systemd_analyze_verify";
    let dir = tempfile::tempdir().unwrap();
    let units = units_with_built_binary(dir.path(), |_, text| text);
    let Some((ok, text)) = systemd_verify(test, &units) else {
        return;
    };
    // verify exits 0 on an unknown directive or system call: it only
    // warns, so any line it prints is a failure here.
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
}

#[test]
fn a_misspelled_directive_or_missing_program_fails_the_unit_check() {
    let test = "a_misspelled_directive_or_missing_program_fails_the_unit_check";
    let dir = tempfile::tempdir().unwrap();
    let units = units_with_built_binary(dir.path(), |daemon, text| match daemon {
        "storage" => text.replace("ProtectSystem=strict", "ProtectSytem=strict"),
        _ => text,
    });
    let Some((ok, text)) = systemd_verify(test, &units) else {
        return;
    };
    assert!(ok, "a misspelled directive is only a warning:\n{text}");
    assert!(text.contains("ProtectSytem"), "{text}");
    // The unit as shipped, whose program is not installed here.
    let Some((ok, text)) = systemd_verify(test, &[unit_path("storage")]) else {
        return;
    };
    if !Path::new("/usr/local/bin/corral").exists() {
        assert!(!ok && text.contains("/usr/local/bin/corral"), "{text}");
    }
}

#[test]
fn units_give_the_configs_their_paths() {
    let runner = read(&unit_path("runner"));
    let worker = read(&unit_path("worker"));
    let storage = read(&unit_path("storage"));
    // RuntimeDirectory=corral is /run/corral; StateDirectory=x is /var/lib/x.
    let socket = config_value("runner", "listen_path");
    assert_eq!(directive(&runner, "RuntimeDirectory"), ["corral"]);
    assert_eq!(Path::new(&socket).parent(), Some(Path::new("/run/corral")));
    assert_eq!(config_value("worker", "slots[0].runner"), socket);
    let directory = config_value("worker", "directory");
    assert_eq!(directive(&worker, "StateDirectory"), ["corral/worker"]);
    assert_eq!(directory, "/var/lib/corral/worker");
    // The runner's writable path is the worker's whole directory: the
    // worker makes build/ again at start, which a bind mount of build/
    // alone in the runner's namespace would not see.
    assert_eq!(directive(&runner, "StateDirectory"), ["corral/worker"]);
    assert_eq!(
        config_value("runner", "build_directory"),
        format!("{directory}/build")
    );
    assert_eq!(directive(&storage, "StateDirectory"), ["corral-storage"]);
    assert!(config_value("storage", "backend.dir").starts_with("/var/lib/corral-storage/"));
    // The sandbox's cgroups, and no unit mount over /proc for the runner.
    assert_eq!(directive(&runner, "Delegate"), ["yes"]);
    assert_eq!(directive(&runner, "OOMPolicy"), ["continue"]);
    for hides_proc in ["ProtectKernelTunables", "ProtectProc", "ProcSubset"] {
        assert!(directive(&runner, hides_proc).is_empty(), "{hides_proc}");
    }
    for daemon in DAEMONS {
        let unit = read(&unit_path(daemon));
        assert_eq!(
            directive(&unit, "ExecStart"),
            [format!(
                "/usr/local/bin/corral {daemon} --config /etc/corral/{daemon}.toml"
            )]
        );
    }
}
