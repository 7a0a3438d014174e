//! Rewrites the credentials clients are able to send into the form every GitLab version reads.
//!
//! `bundle` and `gem` can only send HTTP Basic (from `bundle config` or URL userinfo), but
//! GitLab's RubyGems API before 19.1 reads only a raw `Authorization: <token>` header and
//! takes any Basic header for an invalid token (reference gitlab-api.md §3.3). The go
//! command can only send `.netrc` credentials as Basic, and GitLab's Go API does not read a
//! CI job token from Basic (§2.5). The proxy moves the token to where GitLab looks for it.
//!
//! The caller's fingerprint is taken from the headers as the client sent them, before this
//! runs, so translation never changes who the proxy thinks is calling.

use base64::Engine;
use http::header::{HeaderMap, HeaderValue, AUTHORIZATION};

use crate::route::Api;

/// The user name GitLab documents for CI job tokens in `.netrc` and Basic auth.
pub const JOB_TOKEN_USER: &str = "gitlab-ci-token";

/// Rewrites `headers` (a client's request headers) for `api`, in place.
///
/// - RubyGems: `Basic user:token` and `Basic token:` (what `bundle config <src> <token>`
///   sends) become `Authorization: <token>`; a Basic header with neither part is dropped
///   (GitLab before 19.1 would take it for an invalid token).
/// - Go: `Basic gitlab-ci-token:<job token>` becomes `Job-Token: <job token>`. Other Basic
///   credentials stay: GitLab reads a personal access token from the Basic password itself.
///
/// Anything that is not a single well-formed Basic header is left exactly as it came.
pub fn translate(api: Api, headers: &mut HeaderMap) {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return;
    };
    if api == Api::Go && !may_name_job_token_user(value) {
        // The only Basic credentials Go's API needs moved; every other Go caller stops here
        // without decoding anything.
        return;
    }
    let Some((user, password)) = basic(value) else {
        return;
    };
    match api {
        Api::RubyGems => {
            let token = if password.is_empty() { user } else { password };
            headers.remove(AUTHORIZATION);
            if token.is_empty() {
                return;
            }
            if let Ok(raw) = HeaderValue::from_str(&token) {
                let mut raw = raw;
                raw.set_sensitive(true);
                headers.insert(AUTHORIZATION, raw);
            }
        }
        Api::Go => {
            if user != JOB_TOKEN_USER || password.is_empty() {
                return;
            }
            let Ok(mut job_token) = HeaderValue::from_str(&password) else {
                return;
            };
            job_token.set_sensitive(true);
            headers.remove(AUTHORIZATION);
            headers.insert("job-token", job_token);
        }
    }
}

/// Whether a value could be `Basic` credentials of [`JOB_TOKEN_USER`]: their base64 then
/// starts with that user's own encoding, since its 15 bytes are whole base64 groups.
fn may_name_job_token_user(value: &HeaderValue) -> bool {
    /// `gitlab-ci-token` in base64.
    const ENCODED_USER: &[u8] = b"Z2l0bGFiLWNpLXRva2Vu";
    let text = value.as_bytes().trim_ascii();
    let Some(space) = text.iter().position(|&b| b == b' ') else {
        return false;
    };
    let (scheme, encoded) = text.split_at(space);
    scheme.eq_ignore_ascii_case(b"basic") && encoded.trim_ascii().starts_with(ENCODED_USER)
}

/// `(user, password)` of an `Authorization: Basic …` value, split at the first `:`.
fn basic(value: &HeaderValue) -> Option<(String, String)> {
    let text = value.to_str().ok()?.trim();
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':').unwrap_or((&decoded, ""));
    // A token never holds control characters; such input is left for GitLab to refuse.
    if user.chars().chain(password.chars()).any(char::is_control) {
        return None;
    }
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic_header(credentials: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).unwrap(),
        );
        headers
    }

    fn translated(api: Api, mut headers: HeaderMap) -> HeaderMap {
        translate(api, &mut headers);
        headers
    }

    #[test]
    fn rubygems_basic_becomes_the_raw_token() {
        for credentials in ["__token__:glpat-x", "anyone:glpat-x", "glpat-x:", "glpat-x"] {
            let out = translated(Api::RubyGems, basic_header(credentials));
            assert_eq!(out[AUTHORIZATION], "glpat-x", "{credentials}");
            assert!(out[AUTHORIZATION].is_sensitive());
        }
        let out = translated(Api::RubyGems, basic_header(":"));
        assert!(!out.contains_key(AUTHORIZATION));
    }

    #[test]
    fn go_job_token_user_becomes_job_token() {
        let out = translated(Api::Go, basic_header("gitlab-ci-token:glcbt-123"));
        assert!(!out.contains_key(AUTHORIZATION));
        assert_eq!(out["job-token"], "glcbt-123");
        // A personal access token in Basic is what GitLab reads itself.
        let pat = basic_header("__token__:glpat-x");
        assert_eq!(translated(Api::Go, pat.clone()), pat);
        let empty = basic_header("gitlab-ci-token:");
        assert_eq!(translated(Api::Go, empty.clone()), empty);
        let longer = basic_header("gitlab-ci-tokens:glcbt-123");
        assert_eq!(translated(Api::Go, longer.clone()), longer);
        // Any spelling of the scheme, and spaces around the credentials, as `basic` takes them.
        let encoded = base64::engine::general_purpose::STANDARD.encode("gitlab-ci-token:glcbt-9");
        let mut spaced = HeaderMap::new();
        spaced.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!(" bAsIc   {encoded} ")).unwrap(),
        );
        assert_eq!(translated(Api::Go, spaced)["job-token"], "glcbt-9");
    }

    #[test]
    fn everything_else_is_left_alone() {
        let mut raw = HeaderMap::new();
        raw.insert(AUTHORIZATION, HeaderValue::from_static("glpat-raw"));
        let mut bearer = HeaderMap::new();
        bearer.insert(AUTHORIZATION, HeaderValue::from_static("Bearer glpat-x"));
        let mut broken = HeaderMap::new();
        broken.insert(AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        let mut twice = basic_header("a:b");
        twice.append(AUTHORIZATION, HeaderValue::from_static("Basic YTpi"));
        let mut private = HeaderMap::new();
        private.insert("private-token", HeaderValue::from_static("glpat-x"));
        for api in [Api::RubyGems, Api::Go] {
            for headers in [&raw, &bearer, &broken, &twice, &private, &HeaderMap::new()] {
                assert_eq!(&translated(api, headers.clone()), headers);
            }
        }
        let control = basic_header("a:b\nc");
        assert_eq!(translated(Api::RubyGems, control.clone()), control);
    }
}
