//! How a refusal quotes what a client sent (an instance name, a resource
//! name, a hash): whole when short, cut when long. A status message
//! travels in the grpc-message header, which clients cap (all headers
//! together: 16 KiB in hyper, after percent-encoding): a refusal quoting a
//! 100 KB name whole reaches the client as an HTTP/2 protocol error
//! instead of the status meant. Every service that quotes client input in
//! a status uses this (storage re-exports it from `status`).

/// Most bytes of a client's own text echoed in an error.
pub const ECHO_MAX_BYTES: usize = 256;

/// `text`, or its first [`ECHO_MAX_BYTES`] and its length.
pub fn excerpt(text: &str) -> String {
    if text.len() <= ECHO_MAX_BYTES {
        return text.to_owned();
    }
    let mut end = ECHO_MAX_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_on_a_character_boundary_with_its_length() {
        assert_eq!(excerpt("team-a"), "team-a");
        let long = "é".repeat(1000);
        let cut = excerpt(&long);
        assert!(cut.len() < ECHO_MAX_BYTES + 32, "{}", cut.len());
        assert!(cut.ends_with("… (2000 bytes)"), "{cut}");
    }
}
