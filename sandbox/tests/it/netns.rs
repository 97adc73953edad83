//! Probes of the actions' network namespaces: an action never sees another
//! action's namespace, and cannot reconfigure its own. Written for a pool
//! of prepared namespaces (tried for issue 20 and dropped, decision 0020),
//! they hold any way a namespace is made.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use corral_sandbox::{Command, Sandbox};

use crate::{default_policy, input_root, privileged, python};

/// Runs a Python script in `sandbox` with `root` as the input root.
fn python_in(sandbox: &Sandbox, root: &Path, script: &str) -> (String, String) {
    let out = tempfile::tempdir().unwrap();
    let command = Command {
        argv: ["/usr/bin/python3", "-c", script]
            .iter()
            .map(OsString::from)
            .collect(),
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        input_root: root.to_owned(),
        working_dir: PathBuf::new(),
        stdout: out.path().join("stdout"),
        stderr: out.path().join("stderr"),
        timeout: Some(Duration::from_secs(30)),
    };
    let outcome = sandbox.run(&command).expect("the sandbox runs the command");
    let stdout = std::fs::read_to_string(&command.stdout).unwrap_or_default();
    let stderr = std::fs::read_to_string(&command.stderr).unwrap_or_default();
    assert_eq!(outcome.exit_code(), 0, "{stdout}\n{stderr}");
    (stdout, stderr)
}

/// Two actions of one sandbox at the same time: a server the first
/// listens on is not reachable from the second, which can bind the same
/// port itself; a third, after both, is in yet another namespace. Fails
/// with `ESCAPED connected` if two runs shared one namespace.
#[test]
fn a_network_namespace_serves_one_action_only() {
    if !privileged("a_network_namespace_serves_one_action_only") {
        return;
    }
    const PORT: u16 = 47_391;
    let sandbox = Sandbox::new(default_policy()).unwrap();
    let first_root = input_root();
    let listening = first_root.path().join("listening");
    let done = first_root.path().join("done");
    let ns = "print('ns', os.readlink('/proc/self/ns/net'))";
    let server = format!(
        "import os, socket, time\n{ns}\n\
         s = socket.socket(); s.bind(('127.0.0.1', {PORT})); s.listen()\n\
         open('/build/listening', 'w').close()\n\
         end = time.time() + 20\n\
         while not os.path.exists('/build/done') and time.time() < end: time.sleep(0.01)\n"
    );
    let client = format!(
        "import os, socket\n{ns}\n\
         try:\n    socket.create_connection(('127.0.0.1', {PORT}), timeout=5); print('ESCAPED connected')\n\
         except OSError as e:\n    print('DENIED connect', e.errno)\n\
         s = socket.socket(); s.bind(('127.0.0.1', {PORT})); print('bound')\n"
    );
    let (first, second) = std::thread::scope(|scope| {
        let first = scope.spawn(|| python_in(&sandbox, first_root.path(), &server));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !listening.exists() && Instant::now() < deadline && !first.is_finished() {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(listening.exists(), "the first action never listened");
        let second_root = input_root();
        let second = python_in(&sandbox, second_root.path(), &client);
        std::fs::write(&done, "").unwrap();
        (first.join().unwrap(), second)
    });
    let third = python_in(&sandbox, input_root().path(), &format!("import os\n{ns}"));
    let namespace = |out: &(String, String)| {
        out.0
            .lines()
            .find_map(|l| l.strip_prefix("ns "))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no namespace printed: {out:?}"))
    };
    assert!(
        second
            .0
            .contains(&format!("DENIED connect {}\n", libc::ECONNREFUSED)),
        "{second:?}"
    );
    assert!(second.0.contains("bound\n"), "{second:?}");
    let names = [namespace(&first), namespace(&second), namespace(&third)];
    let own = std::fs::read_link("/proc/self/ns/net").unwrap();
    for name in &names {
        assert_ne!(
            Path::new(name),
            own,
            "an action ran in the caller's namespace"
        );
    }
    assert!(
        names[0] != names[1] && names[1] != names[2] && names[0] != names[2],
        "two actions shared a namespace: {names:?}"
    );
}

/// The action cannot bring loopback down, add an address, or change a
/// sysctl of its namespace: it holds no capability (init, which brought
/// loopback up, does, in the namespace's own user namespace). Loopback is
/// up.
#[test]
fn the_network_namespace_cannot_be_reconfigured() {
    if !privileged("the_network_namespace_cannot_be_reconfigured") {
        return;
    }
    let ran = python(
        r#"import fcntl, socket, struct, errno
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
SIOCGIFFLAGS, SIOCSIFFLAGS, SIOCSIFADDR = 0x8913, 0x8914, 0x8916
flags = struct.unpack('16sh', fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack('16sh', b'lo', 0)))[1]
print('UP' if flags & 1 else 'DOWN')
try:
    fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack('16sh', b'lo', 0)); print('ESCAPED down')
except OSError as e:
    print('DENIED down', e.errno)
addr = struct.pack('16sH2s4s8s', b'lo:1', socket.AF_INET, b'\0\0', socket.inet_aton('10.9.8.7'), b'\0' * 8)
try:
    fcntl.ioctl(s, SIOCSIFADDR, addr); print('ESCAPED address')
except OSError as e:
    print('DENIED address', e.errno)
try:
    open('/proc/sys/net/ipv4/ip_unprivileged_port_start', 'w').write('0'); print('ESCAPED sysctl')
except OSError as e:
    print('DENIED sysctl', e.errno)
"#,
    );
    let eperm = libc::EPERM;
    let expected = format!(
        "UP\nDENIED down {eperm}\nDENIED address {eperm}\nDENIED sysctl {}\n",
        libc::EACCES
    );
    assert_eq!(ran.stdout, expected, "{}", ran.output());
}
