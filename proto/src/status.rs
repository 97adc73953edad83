//! Text for gRPC status messages. A `thiserror` error's own message names
//! only its step; the daemons put the whole chain of causes in the status
//! a client sees, so it says what was wrong, one way everywhere.

/// An error and its causes, joined with `": "`.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[test]
    fn each_cause_follows_its_error() {
        let io = std::io::Error::other("disk full");
        let outer = std::io::Error::other(Wrapped(io));
        assert_eq!(error_chain(&outer), "writing: disk full");
    }

    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("writing")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
