//! Package-protocol vocabulary: validated names for the Go and RubyGems APIs.

pub mod goproxy;
pub mod rubygems;

/// Why a name from a request path was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{0} is empty")]
    Empty(&'static str),
    #[error("{0} is longer than {1}")]
    TooLong(&'static str, usize),
    #[error("{0} is not valid: {1}")]
    Invalid(&'static str, &'static str),
}

/// Percent-decodes one URL component into UTF-8 free of control characters.
pub(crate) fn decode_component(raw: &str, what: &'static str) -> Result<String, NameError> {
    if raw.contains('%') {
        // A `%` that does not start an escape is passed through by percent-encoding; GitLab's
        // CGI.unescape would do the same, but such input only shows up in attacks or typos.
        let bytes = raw.as_bytes();
        for (i, _) in raw.match_indices('%') {
            let hex = bytes.get(i + 1..i + 3);
            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                return Err(NameError::Invalid(what, "bad percent escape"));
            }
        }
    }
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| NameError::Invalid(what, "not UTF-8"))?;
    if decoded.chars().any(char::is_control) {
        return Err(NameError::Invalid(what, "control character"));
    }
    Ok(decoded.into_owned())
}
