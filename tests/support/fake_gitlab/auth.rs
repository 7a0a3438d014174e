//! Who is calling (per API, as GitLab finds credentials) and what they may do in a project.

use std::sync::LazyLock;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use http::{HeaderMap, Method};
use regex::Regex;

use super::model::{Credential, Instance, PatState, Project, Token};
use super::reply::{Api, Reply};
use super::route::Query;
use super::{Access, RubyGemsEra};

/// The parts of a request that authentication looks at.
pub(super) struct Call<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub query: &'a Query,
}

impl Call<'_> {
    fn is_read(&self) -> bool {
        self.method == Method::GET || self.method == Method::HEAD
    }

    /// A header's value when present and not blank (Rails' `.presence`).
    fn header(&self, name: &str) -> Option<String> {
        let value = self.headers.get(name)?;
        present(&String::from_utf8_lossy(value.as_bytes())).map(str::to_owned)
    }

    fn param(&self, name: &str) -> Option<String> {
        self.query.get(name).and_then(present).map(str::to_owned)
    }

    /// Doorkeeper's `from_bearer_authorization`: `Authorization: Bearer <token>`.
    fn bearer(&self) -> Option<String> {
        static BEARER: LazyLock<Regex> =
            LazyLock::new(|| Regex::new("(?i)^Bearer ").expect("valid regex"));
        let authorization = self.header("authorization")?;
        let token = BEARER.find(&authorization)?;
        present(&authorization[token.end()..]).map(str::to_owned)
    }

    /// Rails' `user_name_and_password` for an `Authorization: Basic ...` header: the decoded
    /// credentials split at the first `:` (either side may be empty).
    fn basic(&self) -> Option<(String, String)> {
        let authorization = self.header("authorization")?;
        // Ruby's `split(" ", 2)`: leading whitespace ignored, split at the first run of it.
        let authorization = authorization.trim_start();
        let (scheme, param) = match authorization.split_once(char::is_whitespace) {
            Some((scheme, param)) => (scheme, param.trim_start()),
            None => (authorization, ""),
        };
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = ruby_decode64(param);
        let decoded = String::from_utf8_lossy(&decoded);
        Some(match decoded.split_once(':') {
            Some((user, password)) => (user.to_owned(), password.to_owned()),
            None => (decoded.into_owned(), String::new()),
        })
    }
}

/// The caller as the permission checks see it.
pub(super) enum Caller<'a> {
    Anonymous,
    /// The user behind a personal access token or a running job's token.
    Member(&'a [(u64, Access)]),
    /// A deploy token: not a user; its scopes decide what it may do in its projects.
    Deploy {
        scopes: &'a [&'static str],
        projects: &'a [(u64, Access)],
    },
}

impl Caller<'_> {
    pub fn is_anonymous(&self) -> bool {
        matches!(self, Caller::Anonymous)
    }

    fn role(&self, project: &Project) -> Option<Access> {
        match self {
            Caller::Member(grants) => grants
                .iter()
                .find(|(id, _)| *id == project.id)
                .map(|(_, access)| *access),
            _ => None,
        }
    }

    fn deploy_scope(&self, project: &Project, scope: &str) -> bool {
        match self {
            Caller::Deploy { scopes, projects } => {
                scopes.contains(&scope) && projects.iter().any(|(id, _)| *id == project.id)
            }
            _ => false,
        }
    }

    /// `:read_package`: anyone on a public project; Reporter and up on a private one.
    fn can_read_package(&self, project: &Project) -> bool {
        project.is_public()
            || self.role(project) >= Some(Access::Reporter)
            || self.deploy_scope(project, "read_package_registry")
    }

    /// `:read_project`: what separates "forbidden" (a Guest) from "not found".
    fn can_read_project(&self, project: &Project) -> bool {
        project.is_public() || self.role(project).is_some()
    }

    /// `:create_package`.
    pub fn can_create_package(&self, project: &Project) -> bool {
        self.role(project) >= Some(Access::Developer)
            || self.deploy_scope(project, "write_package_registry")
    }
}

/// GitLab's `user_project_with_read_package`: the project, or why the caller cannot pull
/// from it. The Go API also sets `authenticate_non_public`, which turns "not found" into
/// 401 for anonymous callers, whether or not the project exists.
pub(super) fn project_for_read<'a>(
    instance: &'a Instance,
    caller: &Caller<'_>,
    id: &str,
    api: Api,
) -> Result<&'a Project, Reply> {
    if let Some(project) = instance.find_project(id) {
        if caller.can_read_package(project) {
            return Ok(project);
        }
        if caller.can_read_project(project) {
            return Err(Reply::forbidden(api));
        }
    }
    if api == Api::Go && caller.is_anonymous() {
        return Err(Reply::unauthorized(api));
    }
    Err(Reply::project_not_found(api))
}

/// The Go proxy's credentials (reference §2.5), in the order GitLab's API guard tries them:
/// a job token sent as Bearer; then an access token from `private_token=`, `Private-Token`
/// or Bearer (which must exist), else from Basic auth's password (ignored if unknown); then
/// a job token from `job_token=`, `token=` or `Job-Token` (which must be a running job's).
/// Deploy tokens are not accepted at all.
pub(super) fn go_caller<'a>(instance: &'a Instance, call: &Call<'_>) -> Result<Caller<'a>, Reply> {
    api_caller(instance, call, true)
}

/// The API guard's credentials for an ordinary REST endpoint that allows job tokens (like
/// the Packages API): as for Go, except that a personal access token in Basic auth is only
/// read where the route sets `basic_auth_personal_access_token` (`basic_pat`).
pub(super) fn api_caller<'a>(
    instance: &'a Instance,
    call: &Call<'_>,
    basic_pat: bool,
) -> Result<Caller<'a>, Reply> {
    let lookup = |value: &str| instance.tokens.get(value);
    let bearer = call.bearer();
    if let Some(Token {
        credential: Credential::Job { running: true },
        grants,
    }) = bearer.as_deref().and_then(lookup)
    {
        return Ok(Caller::Member(grants));
    }
    let access_token = call
        .param("private_token")
        .or_else(|| call.header("private-token"))
        .or(bearer);
    if let Some(value) = access_token {
        return match lookup(&value) {
            Some(Token {
                credential: Credential::Personal { scopes, state },
                grants,
            }) => personal(grants, scopes, *state, call),
            _ => Err(Reply::unauthorized(Api::Go)),
        };
    }
    if let Some((_user, password)) = call.basic().filter(|_| basic_pat) {
        if let Some(Token {
            credential: Credential::Personal { scopes, state },
            grants,
        }) = lookup(&password)
        {
            return personal(grants, scopes, *state, call);
        }
    }
    let job_token = call
        .param("job_token")
        .or_else(|| call.param("token"))
        .or_else(|| call.header("job-token"));
    if let Some(value) = job_token {
        return match lookup(&value) {
            Some(Token {
                credential: Credential::Job { running: true },
                grants,
            }) => Ok(Caller::Member(grants)),
            _ => Err(Reply::unauthorized(Api::Go)),
        };
    }
    Ok(Caller::Anonymous)
}

/// The RubyGems API's credentials (reference §3.3): only the `Authorization` header. The
/// raw value is the token (from 19.1 not when it starts with `Basic ` or `Bearer `); from
/// 19.1 a Basic password also is (with a non-empty user name). A credential found must be a
/// personal, active deploy or running job token, tried in that order, else 401.
pub(super) fn rubygems_caller<'a>(
    instance: &'a Instance,
    era: RubyGemsEra,
    call: &Call<'_>,
) -> Result<Caller<'a>, Reply> {
    static SCHEME: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"(?i)^(Basic|Bearer)\s").expect("valid regex"));
    let raw = call
        .header("authorization")
        .filter(|value| era == RubyGemsEra::Pre19_1 || !SCHEME.is_match(value));
    let basic_password = || {
        call.basic()
            .filter(|(user, password)| present(user).is_some() && present(password).is_some())
            .map(|(_, password)| password)
    };
    let credential = match era {
        RubyGemsEra::Pre19_1 => raw,
        RubyGemsEra::V19_1 => raw.or_else(basic_password),
    };
    let Some(value) = credential else {
        return Ok(Caller::Anonymous);
    };
    let Some(Token { credential, grants }) = instance.tokens.get(&value) else {
        return Err(Reply::unauthorized(Api::RubyGems));
    };
    match credential {
        Credential::Personal { scopes, state } => personal(grants, scopes, *state, call),
        Credential::Deploy {
            scopes,
            active: true,
        } => Ok(Caller::Deploy {
            scopes,
            projects: grants,
        }),
        Credential::Job { running: true } => Ok(Caller::Member(grants)),
        Credential::Deploy { active: false, .. } | Credential::Job { running: false } => {
            Err(Reply::unauthorized(Api::RubyGems))
        }
    }
}

/// GitLab's `validate_and_save_access_token!` for a personal access token: expired and
/// revoked tokens get rack-oauth2's challenge; the token needs scope `api`, or `read_api`
/// for GET and HEAD.
fn personal<'a>(
    grants: &'a [(u64, Access)],
    scopes: &[&str],
    state: PatState,
    call: &Call<'_>,
) -> Result<Caller<'a>, Reply> {
    match state {
        PatState::Expired => return Err(Reply::token_expired()),
        PatState::Revoked => return Err(Reply::token_revoked()),
        PatState::Active => {}
    }
    if !(scopes.contains(&"api") || (call.is_read() && scopes.contains(&"read_api"))) {
        return Err(Reply::insufficient_scope());
    }
    Ok(Caller::Member(grants))
}

/// Ruby's `.presence`: `None` for blank text.
fn present(value: &str) -> Option<&str> {
    (!value.trim().is_empty()).then_some(value)
}

/// Ruby's `Base64.decode64`, which never fails: characters outside the alphabet are
/// skipped, decoding stops at padding, and a dangling partial byte is dropped.
fn ruby_decode64(text: &str) -> Vec<u8> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let mut symbols: Vec<u8> = text
        .bytes()
        .take_while(|&b| b != b'=')
        .filter(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        .collect();
    if symbols.len() % 4 == 1 {
        symbols.pop();
    }
    LENIENT.decode(&symbols).unwrap_or_default()
}
