//! Self-test of the fake GitLab: it must answer as `shared/reference/gitlab-api.md` says
//! GitLab does (§2.5 and §3.3 case by case, both RubyGems eras), and its test controls must
//! work as documented.

mod support;

use std::io::{Cursor, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use support::client::{self, Response};
use support::fake_gitlab::{
    Access, FakeGitLab, Fault, GemFixture, RubyGemsEra, TokenKind, TokenState, Visibility,
};
use support::marshal::{self, Value};

const PUBLIC: u64 = 10;
const PRIVATE: u64 = 20;
const MIXED_CASE: u64 = 30;
const PUBLIC_MODULE: &str = "gitlab.example.com/acme/public";
const PRIVATE_MODULE: &str = "gitlab.example.com/acme/team/private";
const TIME: &str = "2021-04-07T13:05:12.000+00:00";

const UNAUTHORIZED: &str = r#"{"message":"401 Unauthorized"}"#;
const FORBIDDEN: &str = r#"{"message":"403 Forbidden"}"#;
const PROJECT_NOT_FOUND: &str = r#"{"message":"404 Project Not Found"}"#;
const NOT_FOUND: &str = r#"{"message":"404 Not Found"}"#;
const RECORD_NOT_FOUND: &str = r#"{"message":"404 Not found"}"#;
const ROUTE_NOT_FOUND: &str = r#"{"error":"404 Not Found"}"#;
const CREATED: &str = r#"{"message":"201 Created"}"#;
const EXPIRED: &str = r#"{"error":"invalid_token","error_description":"Token is expired. You can either do re-authorization or token refresh."}"#;
const EXPIRED_CHALLENGE: &str = r#"Bearer realm="Protected by OAuth 2.0", error="invalid_token", error_description="Token is expired. You can either do re-authorization or token refresh.""#;
const REVOKED: &str = r#"{"error":"invalid_token","error_description":"Token was revoked. You have to re-authorize from the user."}"#;
const REVOKED_CHALLENGE: &str = r#"Bearer realm="Protected by OAuth 2.0", error="invalid_token", error_description="Token was revoked. You have to re-authorize from the user.""#;
const INSUFFICIENT_SCOPE: &str = r#"{"error":"insufficient_scope","error_description":"The request requires higher privileges than provided by the access token.","scope":"api read_api"}"#;

const ROOT_GO_MOD: &str = "module gitlab.example.com/acme/public\n\ngo 1.21\n";
const PUBLIC_LIST: &str = "v1.0.0\nv1.1.0-Beta\nv1.3.0";
const PRIVATE_LIST: &str = "v0.1.0";
const PUBLIC_GEM: &str = "gem foo 1.0.0, pushed again";
const PRIVATE_GEM: &str = "gem private foo 1.0.0";

fn files(files: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    files
        .iter()
        .map(|(path, contents)| (path.to_string(), contents.as_bytes().to_vec()))
        .collect()
}

fn gem(name: &str, version: &str) -> GemFixture {
    GemFixture::new(name, version, format!("gem {name} {version}"))
}

/// A token's value, kind, state and grants.
type TokenRow = (
    &'static str,
    TokenKind,
    TokenState,
    &'static [(u64, Access)],
);

/// Two acme projects (one public, one private) with Go modules and gems, a mixed-case
/// project, and a token of every kind that §2.5 and §3.3 distinguish.
async fn start() -> FakeGitLab {
    start_with(FakeGitLab::builder()).await
}

async fn start_with(builder: support::fake_gitlab::FakeGitLabBuilder) -> FakeGitLab {
    let personal = |scopes: &[&'static str]| TokenKind::Personal {
        scopes: scopes.to_vec(),
    };
    let deploy = |scopes: &[&'static str]| TokenKind::Deploy {
        scopes: scopes.to_vec(),
    };
    let mut first_upload = gem("foo", "1.0.0");
    first_upload.gemspec_rz = Some(b"rz foo 1.0.0".to_vec());
    first_upload.dependencies = vec![
        ("bar".into(), ">= 0.1".into()),
        ("rspec".into(), "~> 3.0".into()),
    ];
    let mut second_upload = first_upload.clone();
    second_upload.gem_bytes = PUBLIC_GEM.into();
    let mut bar = gem("bar", "0.1.0");
    bar.platform = "java".into();
    // Every kind of token that §2.5 and §3.3 tell apart, one per line.
    #[rustfmt::skip]
    let tokens: Vec<TokenRow> = vec![
        ("pat-dev", personal(&["api"]), TokenState::Active, &[(PUBLIC, Access::Developer), (PRIVATE, Access::Developer)]),
        ("pat-reader", personal(&["read_api"]), TokenState::Active, &[(PRIVATE, Access::Developer)]),
        ("pat-reporter", personal(&["api"]), TokenState::Active, &[(PRIVATE, Access::Reporter)]),
        ("pat-guest", personal(&["api"]), TokenState::Active, &[(PUBLIC, Access::Guest), (PRIVATE, Access::Guest)]),
        ("pat-outsider", personal(&["api"]), TokenState::Active, &[]),
        ("pat-noscope", personal(&["read_user"]), TokenState::Active, &[(PRIVATE, Access::Developer)]),
        ("pat-expired", personal(&["api"]), TokenState::Expired, &[(PRIVATE, Access::Developer)]),
        ("pat-revoked", personal(&["api"]), TokenState::Revoked, &[(PRIVATE, Access::Developer)]),
        ("job-running", TokenKind::Job, TokenState::Active, &[(PRIVATE, Access::Developer)]),
        ("job-finished", TokenKind::Job, TokenState::JobFinished, &[(PRIVATE, Access::Developer)]),
        ("deploy-read", deploy(&["read_package_registry"]), TokenState::Active, &[(PRIVATE, Access::Reporter)]),
        ("deploy-write", deploy(&["read_package_registry", "write_package_registry"]), TokenState::Active, &[(PRIVATE, Access::Reporter)]),
        ("deploy-expired", deploy(&["read_package_registry"]), TokenState::Expired, &[(PRIVATE, Access::Reporter)]),
    ];
    let builder = tokens
        .into_iter()
        .fold(builder, |builder, (value, kind, state, grants)| {
            builder.token(value, kind, state, grants)
        });
    builder
        .project(PUBLIC, "acme/public", Visibility::Public)
        .project(PRIVATE, "acme/team/private", Visibility::Private)
        .project(MIXED_CASE, "Acme/MixedCase", Visibility::Public)
        .go_version(
            PUBLIC,
            "",
            "v1.0.0",
            TIME,
            files(&[
                ("go.mod", ROOT_GO_MOD),
                ("main.go", "package public\n"),
                ("internal/x.go", "package internal\n"),
            ]),
        )
        .go_version(
            PUBLIC,
            "",
            "v1.1.0-Beta",
            TIME,
            files(&[("go.mod", ROOT_GO_MOD)]),
        )
        // Not listed: the go.mod names another module.
        .go_version(
            PUBLIC,
            "",
            "v1.2.0",
            TIME,
            files(&[("go.mod", "module example.com/other\n")]),
        )
        // Not listed at the root (a v2 needs a /v2 module), but valid for the v2 directory.
        .go_version(
            PUBLIC,
            "",
            "v2.0.0",
            TIME,
            files(&[("go.mod", ROOT_GO_MOD)]),
        )
        .go_version(
            PUBLIC,
            "v2",
            "v2.0.0",
            TIME,
            files(&[("go.mod", "module gitlab.example.com/acme/public/v2\n")]),
        )
        // Not listed: not a v-prefixed SemVer tag.
        .go_version(
            PUBLIC,
            "",
            "release-1",
            TIME,
            files(&[("go.mod", ROOT_GO_MOD)]),
        )
        .go_version(
            PUBLIC,
            "",
            "v1.3.0",
            "2022-01-02T03:04:05.000-06:00",
            files(&[("go.mod", ROOT_GO_MOD), ("lib.go", "package public\n")]),
        )
        .go_version(
            PUBLIC,
            "tools",
            "v1.3.0",
            "2022-01-02T03:04:05.000-06:00",
            files(&[
                ("go.mod", "module gitlab.example.com/acme/public/tools\n"),
                ("tool.go", "package tools\n"),
            ]),
        )
        .go_version(
            PRIVATE,
            "",
            "v0.1.0",
            TIME,
            files(&[("go.mod", "module gitlab.example.com/acme/team/private\n")]),
        )
        .go_version(
            MIXED_CASE,
            "",
            "v1.0.0",
            TIME,
            files(&[("go.mod", "module gitlab.example.com/Acme/MixedCase\n")]),
        )
        .gem(PUBLIC, first_upload)
        .gem(PUBLIC, gem("foo", "1.10.0"))
        .gem(PUBLIC, gem("foo", "1.2.0"))
        .gem(PUBLIC, gem("foo", "3.0.0-beta"))
        .gem(PUBLIC, gem("foo", "2.0.0.rc1"))
        .gem(PUBLIC, bar)
        .gem(PUBLIC, second_upload)
        .gem(
            PRIVATE,
            GemFixture::new("foo", "1.0.0", PRIVATE_GEM.as_bytes().to_vec()),
        )
        .start()
        .await
}

fn go(project: &str, module: &str, file: &str) -> String {
    format!("/api/v4/projects/{project}/packages/go/{module}/@v/{file}")
}

fn rubygems(project: &str, rest: &str) -> String {
    format!("/api/v4/projects/{project}/packages/rubygems/{rest}")
}

fn basic(user: &str, password: &str) -> String {
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {credentials}")
}

/// Stands for a body that must be gzip data; spec index contents are checked in
/// `rubygems_success_answers`.
const GZIP: &str = "<gzip data>";

/// One request and what must come back.
#[derive(Clone)]
struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Option<Bytes>,
    status: u16,
    expected_body: String,
}

fn case(name: &'static str, path: impl Into<String>) -> Case {
    Case {
        name,
        method: "GET",
        path: path.into(),
        headers: Vec::new(),
        body: None,
        status: 0,
        expected_body: String::new(),
    }
}

impl Case {
    fn post(mut self, body: &'static str) -> Case {
        self.method = "POST";
        self.body = Some(Bytes::from_static(body.as_bytes()));
        self
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Case {
        self.headers.push((name, value.into()));
        self
    }

    fn expect(mut self, status: u16, body: &str) -> Case {
        self.status = status;
        self.expected_body = body.to_owned();
        self
    }
}

/// Runs every case and reports all mismatches at once. Besides status and body, checks
/// what GitLab adds to every API answer, and that only expired or revoked tokens get a
/// `WWW-Authenticate` challenge.
async fn run(fake: &FakeGitLab, label: &str, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for case in cases {
        let headers: Vec<(&str, &str)> =
            case.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let url = format!("{}{}", fake.url(), case.path);
        let response = client::request(case.method, &url, &headers, case.body.clone()).await;
        let challenge = match case.expected_body.as_str() {
            EXPIRED => Some(EXPIRED_CHALLENGE),
            REVOKED => Some(REVOKED_CHALLENGE),
            _ => None,
        };
        let mut problems = Vec::new();
        if response.status != case.status {
            problems.push(format!(
                "status {} (expected {})",
                response.status, case.status
            ));
        }
        let body_matches = if case.expected_body == GZIP {
            response.body.starts_with(&[0x1f, 0x8b])
        } else {
            response.text() == case.expected_body
        };
        if !body_matches {
            problems.push(format!(
                "body {:?} (expected {:?})",
                response.text(),
                case.expected_body
            ));
        }
        if response.header("www-authenticate") != challenge {
            problems.push(format!(
                "WWW-Authenticate {:?}",
                response.header("www-authenticate")
            ));
        }
        if response.header("x-frame-options") != Some("SAMEORIGIN")
            || response.header("x-content-type-options") != Some("nosniff")
        {
            problems.push("missing X-Frame-Options or X-Content-Type-Options".to_owned());
        }
        if !problems.is_empty() {
            failures.push(format!("[{label}] {}: {}", case.name, problems.join("; ")));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[tokio::test]
async fn go_authentication_follows_section_2_5() {
    let fake = start().await;
    let public = |file: &str| go("10", PUBLIC_MODULE, file);
    let private = |file: &str| go("20", PRIVATE_MODULE, file);
    #[rustfmt::skip]
    let cases = vec![
        // Public project.
        case("anonymous on public", public("list")).expect(200, PUBLIC_LIST),
        case("PAT header on public", public("list")).header("Private-Token", "pat-dev").expect(200, PUBLIC_LIST),
        case("invalid Private-Token on public", public("list")).header("Private-Token", "nope").expect(401, UNAUTHORIZED),
        case("invalid Bearer on public", public("list")).header("Authorization", "Bearer nope").expect(401, UNAUTHORIZED),
        case("invalid Job-Token on public", public("list")).header("Job-Token", "nope").expect(401, UNAUTHORIZED),
        case("invalid private_token= on public", format!("{}?private_token=nope", public("list"))).expect(401, UNAUTHORIZED),
        case("invalid PAT in Basic is anonymous", public("list")).header("Authorization", basic("me", "nope")).expect(200, PUBLIC_LIST),
        case("deploy token header is ignored", public("list")).header("Deploy-Token", "deploy-read").expect(200, PUBLIC_LIST),
        case("raw Authorization is ignored", public("list")).header("Authorization", "pat-dev").expect(200, PUBLIC_LIST),
        case("expired PAT on public", public("list")).header("Private-Token", "pat-expired").expect(401, EXPIRED),
        case("finished job on public", public("list")).header("Job-Token", "job-finished").expect(401, UNAUTHORIZED),
        case("Guest of a public project reads", public("list")).header("Private-Token", "pat-guest").expect(200, PUBLIC_LIST),
        // Private project: every accepted transport.
        case("anonymous on private", private("list")).expect(401, UNAUTHORIZED),
        case("Private-Token", private("list")).header("Private-Token", "pat-dev").expect(200, PRIVATE_LIST),
        case("private_token=", format!("{}?private_token=pat-dev", private("list"))).expect(200, PRIVATE_LIST),
        case("Bearer PAT", private("list")).header("Authorization", "Bearer pat-dev").expect(200, PRIVATE_LIST),
        case("Bearer job token", private("list")).header("Authorization", "Bearer job-running").expect(200, PRIVATE_LIST),
        case("Job-Token", private("list")).header("Job-Token", "job-running").expect(200, PRIVATE_LIST),
        case("job_token=", format!("{}?job_token=job-running", private("list"))).expect(200, PRIVATE_LIST),
        case("token= (the runner's job token parameter)", format!("{}?token=job-running", private("list"))).expect(200, PRIVATE_LIST),
        case("Basic with PAT, any user", private("list")).header("Authorization", basic("whoever", "pat-dev")).expect(200, PRIVATE_LIST),
        case("Basic with PAT, no user", private("list")).header("Authorization", basic("", "pat-dev")).expect(200, PRIVATE_LIST),
        case("read_api PAT", private("list")).header("Private-Token", "pat-reader").expect(200, PRIVATE_LIST),
        // Private project: refused or anonymous.
        case("Basic with job token is anonymous", private("list")).header("Authorization", basic("gitlab-ci-token", "job-running")).expect(401, UNAUTHORIZED),
        case("Basic with invalid PAT is anonymous", private("list")).header("Authorization", basic("me", "nope")).expect(401, UNAUTHORIZED),
        case("deploy token header is anonymous", private("list")).header("Deploy-Token", "deploy-read").expect(401, UNAUTHORIZED),
        case("deploy token as PAT is invalid", private("list")).header("Private-Token", "deploy-read").expect(401, UNAUTHORIZED),
        case("deploy token in Basic is anonymous", private("list")).header("Authorization", basic("me", "deploy-read")).expect(401, UNAUTHORIZED),
        case("raw Authorization is anonymous", private("list")).header("Authorization", "pat-dev").expect(401, UNAUTHORIZED),
        case("non-member", private("list")).header("Private-Token", "pat-outsider").expect(404, PROJECT_NOT_FOUND),
        case("Guest", private("list")).header("Private-Token", "pat-guest").expect(403, FORBIDDEN),
        case("scope without api", private("list")).header("Private-Token", "pat-noscope").expect(403, INSUFFICIENT_SCOPE),
        case("expired PAT", private("list")).header("Private-Token", "pat-expired").expect(401, EXPIRED),
        case("expired PAT as Bearer", private("list")).header("Authorization", "Bearer pat-expired").expect(401, EXPIRED),
        case("expired PAT in Basic", private("list")).header("Authorization", basic("me", "pat-expired")).expect(401, EXPIRED),
        case("revoked PAT", private("list")).header("Private-Token", "pat-revoked").expect(401, REVOKED),
        case("finished job", private("list")).header("Job-Token", "job-finished").expect(401, UNAUTHORIZED),
        case("finished job as Bearer", private("list")).header("Authorization", "Bearer job-finished").expect(401, UNAUTHORIZED),
        case("finished job as job_token=", format!("{}?job_token=job-finished", private("list"))).expect(401, UNAUTHORIZED),
        // Non-existent project.
        case("anonymous, no such project", go("999", PRIVATE_MODULE, "list")).expect(401, UNAUTHORIZED),
        case("authenticated, no such project", go("999", PRIVATE_MODULE, "list")).header("Private-Token", "pat-dev").expect(404, PROJECT_NOT_FOUND),
        case("anonymous, project path that is not a path", go("nonsense", PRIVATE_MODULE, "list")).expect(401, UNAUTHORIZED),
        // Authorization comes before the module is looked up.
        case("anonymous on private, foreign module", go("20", "github.com/x/y", "list")).expect(401, UNAUTHORIZED),
        case("non-member on private, unknown version", private("v9.9.9.info")).header("Private-Token", "pat-outsider").expect(404, PROJECT_NOT_FOUND),
        case("Guest on private, foreign module", go("20", "github.com/x/y", "list")).header("Private-Token", "pat-guest").expect(403, FORBIDDEN),
        // Unmatched routes answer before authentication.
        case("@latest on private", format!("/api/v4/projects/20/packages/go/{PRIVATE_MODULE}/@latest")).expect(404, ROUTE_NOT_FOUND),
        case("sumdb on private", "/api/v4/projects/20/packages/go/sumdb/sum.golang.org/supported").expect(404, ROUTE_NOT_FOUND),
    ];
    run(&fake, "go", cases).await;
}

#[tokio::test]
async fn go_routes_modules_and_versions() {
    let fake = start().await;
    let public = |file: &str| go("10", PUBLIC_MODULE, file);
    #[rustfmt::skip]
    let cases = vec![
        case("project by encoded path", go("acme%2Fpublic", PUBLIC_MODULE, "list")).expect(200, PUBLIC_LIST),
        case("project by encoded path, any case", go("ACME%2fPublic", PUBLIC_MODULE, "list")).expect(200, PUBLIC_LIST),
        case("project path that is not a path", go("public", PUBLIC_MODULE, "list")).expect(401, UNAUTHORIZED),
        case("v2 module in its directory", go("10", "gitlab.example.com/acme/public/v2", "list")).expect(200, "v2.0.0"),
        case("nested module", go("10", "gitlab.example.com/acme/public/tools", "list")).expect(200, "v1.3.0"),
        case("directory without a module", go("10", "gitlab.example.com/acme/public/internal", "list")).expect(200, ""),
        case("module outside the project", go("10", "gitlab.example.com/acme/other", "list")).expect(404, NOT_FOUND),
        case("module on another host", go("10", "github.com/acme/public", "list")).expect(404, NOT_FOUND),
        case("project path in the wrong case", go("30", "gitlab.example.com/acme/mixedcase", "list")).expect(404, NOT_FOUND),
        case("case-encoded project path", go("30", "gitlab.example.com/!acme/!mixed!case", "list")).expect(200, "v1.0.0"),
        case("raw upper case passes through", go("30", "gitlab.example.com/Acme/MixedCase", "list")).expect(200, "v1.0.0"),
        case("traversal out of the project", go("10", "gitlab.example.com/acme/public/../other", "list")).expect(404, NOT_FOUND),
        case("encoded traversal out of the project", go("10", "gitlab.example.com/acme/public/%2E%2E/other", "list")).expect(404, NOT_FOUND),
        case("traversal inside the project", go("10", "gitlab.example.com/acme/public/internal/..", "list")).expect(200, PUBLIC_LIST),
        case("blank module name", go("10", "%20", "list")).expect(400, r#"{"message":"400 Bad request - \"Module Name\" not given"}"#),
        case("info", public("v1.0.0.info")).expect(200, r#"{"Version":"v1.0.0","Time":"2021-04-07T13:05:12.000+00:00"}"#),
        case("info keeps the commit's offset", public("v1.3.0.info")).expect(200, r#"{"Version":"v1.3.0","Time":"2022-01-02T03:04:05.000-06:00"}"#),
        case("case-encoded version", public("v1.1.0-!beta.info")).expect(200, r#"{"Version":"v1.1.0-Beta","Time":"2021-04-07T13:05:12.000+00:00"}"#),
        case("raw upper-case version does not route", public("v1.1.0-Beta.info")).expect(404, ROUTE_NOT_FOUND),
        case("v-less version does not route", public("1.0.0.info")).expect(404, ROUTE_NOT_FOUND),
        case("branch name does not route", public("main.info")).expect(404, ROUTE_NOT_FOUND),
        case("unknown extension does not route", public("v1.0.0.txt")).expect(404, ROUTE_NOT_FOUND),
        case("mod", public("v1.0.0.mod")).expect(200, ROOT_GO_MOD),
        case("unknown version", public("v9.9.9.mod")).expect(404, NOT_FOUND),
        case("tag with a foreign go.mod", public("v1.2.0.mod")).expect(404, NOT_FOUND),
        case("v2 tag at the root", public("v2.0.0.mod")).expect(404, NOT_FOUND),
        case("@latest", format!("/api/v4/projects/10/packages/go/{PUBLIC_MODULE}/@latest")).expect(404, ROUTE_NOT_FOUND),
        case("POST is not a route", public("list")).post("").expect(404, ROUTE_NOT_FOUND),
        // The fake's own answer to what it cannot decode; it never panics on request data.
        case("project id that is not UTF-8", go("%FF", PUBLIC_MODULE, "list")).expect(400, "malformed request: a path parameter is not valid UTF-8"),
        case("query that is not UTF-8", format!("{}?private_token=%FF", public("list"))).expect(400, "malformed request: the query string is not valid UTF-8"),
        case("module path that is not UTF-8", go("10", "%FF", "list")).expect(400, "malformed request: the module path is not UTF-8"),
    ];
    run(&fake, "go", cases).await;
}

#[tokio::test]
async fn go_success_answers_carry_gitlab_headers() {
    let fake = start().await;
    let url = |file: &str| format!("{}{}", fake.url(), go("10", PUBLIC_MODULE, file));

    let list = client::get(&url("list"), &[]).await;
    assert_eq!(list.header("content-type"), Some("text/plain"));
    assert_eq!(
        list.header("cache-control"),
        Some("max-age=0, private, must-revalidate")
    );
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(PUBLIC_LIST));
    let etag = format!("W/\"{}\"", &digest[..32]);
    assert_eq!(list.header("etag"), Some(etag.as_str()));

    let info = client::get(&url("v1.0.0.info"), &[]).await;
    assert_eq!(info.header("content-type"), Some("application/json"));

    // An empty list has no digest: no ETag, and Rack's no-cache.
    let empty = client::get(
        &format!(
            "{}{}",
            fake.url(),
            go("10", "gitlab.example.com/acme/public/internal", "list")
        ),
        &[],
    )
    .await;
    assert_eq!((empty.status, empty.header("etag")), (200, None));
    assert_eq!(empty.header("cache-control"), Some("no-cache"));

    let error = client::get(
        &format!("{}{}", fake.url(), go("20", PRIVATE_MODULE, "list")),
        &[],
    )
    .await;
    assert_eq!(error.header("content-type"), Some("application/json"));
    assert_eq!(error.header("cache-control"), Some("no-cache"));
    assert_eq!(error.header("etag"), None);

    // HEAD: the same status and headers, no body.
    let head = client::request("HEAD", &url("list"), &[], None).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("etag"), Some(etag.as_str()));
    assert_eq!(
        head.header("content-length"),
        Some(PUBLIC_LIST.len().to_string().as_str())
    );

    // Rack::ConditionalGet.
    let not_modified = client::get(&url("list"), &[("If-None-Match", &etag)]).await;
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());
    assert_eq!(
        client::get(&url("list"), &[("If-None-Match", "W/\"other\"")])
            .await
            .status,
        200
    );

    let zip = client::get(&url("v1.3.0.zip"), &[]).await;
    assert_eq!(zip.status, 200);
    assert_eq!(zip.header("content-type"), Some("application/zip"));
    assert_eq!(
        zip.header("content-disposition"),
        Some("attachment; filename=\"v1.3.0.zip\"; filename*=UTF-8''v1.3.0.zip")
    );
    assert_eq!(zip.header("content-transfer-encoding"), Some("binary"));
    // The nested `tools` module is left out of the root module's zip.
    assert_eq!(
        unzip(&zip.body),
        vec![
            (
                format!("{PUBLIC_MODULE}@v1.3.0/go.mod"),
                ROOT_GO_MOD.to_owned()
            ),
            (
                format!("{PUBLIC_MODULE}@v1.3.0/lib.go"),
                "package public\n".to_owned()
            ),
        ]
    );
    let tools = client::get(
        &format!(
            "{}{}",
            fake.url(),
            go("10", "gitlab.example.com/acme/public/tools", "v1.3.0.zip")
        ),
        &[],
    )
    .await;
    assert_eq!(
        unzip(&tools.body),
        vec![
            (
                "gitlab.example.com/acme/public/tools@v1.3.0/go.mod".to_owned(),
                "module gitlab.example.com/acme/public/tools\n".to_owned()
            ),
            (
                "gitlab.example.com/acme/public/tools@v1.3.0/tool.go".to_owned(),
                "package tools\n".to_owned()
            ),
        ]
    );
    let root_v1 = client::get(&url("v1.0.0.zip"), &[]).await;
    let names: Vec<String> = unzip(&root_v1.body)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        names,
        ["go.mod", "internal/x.go", "main.go"].map(|f| format!("{PUBLIC_MODULE}@v1.0.0/{f}"))
    );
}

fn unzip(bytes: &[u8]) -> Vec<(String, String)> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).expect("a zip");
    (0..archive.len())
        .map(|i| {
            let mut entry = archive.by_index(i).expect("an entry");
            let mut contents = String::new();
            entry.read_to_string(&mut contents).expect("text");
            (entry.name().to_owned(), contents)
        })
        .collect()
}

/// A request, then the status and body it gets before 19.1 and in 19.1.
type EraRow = (Case, (u16, &'static str), (u16, &'static str));

/// Runs the rows against both RubyGems eras, switching the fake at run time.
async fn run_in_both_eras(fake: &FakeGitLab, rows: &[EraRow]) {
    for era in [RubyGemsEra::Pre19_1, RubyGemsEra::V19_1] {
        fake.set_era(era);
        let cases = rows
            .iter()
            .map(|(request, pre, v19_1)| {
                let (status, body) = match era {
                    RubyGemsEra::Pre19_1 => pre,
                    RubyGemsEra::V19_1 => v19_1,
                };
                request.clone().expect(*status, body)
            })
            .collect();
        run(fake, &format!("{era:?}"), cases).await;
    }
}

#[tokio::test]
async fn rubygems_authentication_follows_section_3_3_in_both_eras() {
    let fake = start().await;
    let public_gem = |name| case(name, rubygems("10", "gems/foo-1.0.0.gem"));
    let private_gem = |name| case(name, rubygems("20", "gems/foo-1.0.0.gem"));
    let push = |name, project| case(name, rubygems(project, "api/v1/gems")).post("a pushed gem");
    #[rustfmt::skip]
    let rows: Vec<EraRow> = vec![
        // Reads, public project.
        (public_gem("anonymous on public"), (200, PUBLIC_GEM), (200, PUBLIC_GEM)),
        (public_gem("raw PAT on public").header("Authorization", "pat-dev"), (200, PUBLIC_GEM), (200, PUBLIC_GEM)),
        (public_gem("raw invalid token on public").header("Authorization", "nope"), (401, UNAUTHORIZED), (401, UNAUTHORIZED)),
        (public_gem("Basic PAT on public").header("Authorization", basic("me", "pat-dev")), (401, UNAUTHORIZED), (200, PUBLIC_GEM)),
        (public_gem("Basic invalid on public").header("Authorization", basic("me", "nope")), (401, UNAUTHORIZED), (401, UNAUTHORIZED)),
        (public_gem("Basic without user on public").header("Authorization", basic("", "pat-dev")), (401, UNAUTHORIZED), (200, PUBLIC_GEM)),
        (public_gem("Bearer on public").header("Authorization", "Bearer pat-dev"), (401, UNAUTHORIZED), (200, PUBLIC_GEM)),
        (public_gem("Private-Token ignored on public").header("Private-Token", "nope"), (200, PUBLIC_GEM), (200, PUBLIC_GEM)),
        (public_gem("Job-Token ignored on public").header("Job-Token", "nope"), (200, PUBLIC_GEM), (200, PUBLIC_GEM)),
        (public_gem("Deploy-Token ignored on public").header("Deploy-Token", "nope"), (200, PUBLIC_GEM), (200, PUBLIC_GEM)),
        // Reads, private project.
        (private_gem("anonymous on private"), (404, PROJECT_NOT_FOUND), (404, PROJECT_NOT_FOUND)),
        (private_gem("raw PAT").header("Authorization", "pat-dev"), (200, PRIVATE_GEM), (200, PRIVATE_GEM)),
        (private_gem("raw read_api PAT").header("Authorization", "pat-reader"), (200, PRIVATE_GEM), (200, PRIVATE_GEM)),
        (private_gem("raw deploy token").header("Authorization", "deploy-read"), (200, PRIVATE_GEM), (200, PRIVATE_GEM)),
        (private_gem("raw job token").header("Authorization", "job-running"), (200, PRIVATE_GEM), (200, PRIVATE_GEM)),
        (private_gem("raw Guest").header("Authorization", "pat-guest"), (403, FORBIDDEN), (403, FORBIDDEN)),
        (private_gem("raw non-member").header("Authorization", "pat-outsider"), (404, PROJECT_NOT_FOUND), (404, PROJECT_NOT_FOUND)),
        (private_gem("raw invalid token").header("Authorization", "nope"), (401, UNAUTHORIZED), (401, UNAUTHORIZED)),
        (private_gem("raw expired deploy token").header("Authorization", "deploy-expired"), (401, UNAUTHORIZED), (401, UNAUTHORIZED)),
        (private_gem("raw finished job").header("Authorization", "job-finished"), (401, UNAUTHORIZED), (401, UNAUTHORIZED)),
        (private_gem("raw expired PAT").header("Authorization", "pat-expired"), (401, EXPIRED), (401, EXPIRED)),
        (private_gem("raw revoked PAT").header("Authorization", "pat-revoked"), (401, REVOKED), (401, REVOKED)),
        (private_gem("raw PAT without api scope").header("Authorization", "pat-noscope"), (403, INSUFFICIENT_SCOPE), (403, INSUFFICIENT_SCOPE)),
        (private_gem("Basic PAT").header("Authorization", basic("__token__", "pat-dev")), (401, UNAUTHORIZED), (200, PRIVATE_GEM)),
        (private_gem("Basic deploy token").header("Authorization", basic("me", "deploy-read")), (401, UNAUTHORIZED), (200, PRIVATE_GEM)),
        (private_gem("Basic job token").header("Authorization", basic("gitlab-ci-token", "job-running")), (401, UNAUTHORIZED), (200, PRIVATE_GEM)),
        (private_gem("Basic invalid").header("Authorization", basic("me", "nope")), (401, UNAUTHORIZED), (401, UNAUTHORIZED)),
        (private_gem("Basic token as user, no password").header("Authorization", basic("pat-dev", "")), (401, UNAUTHORIZED), (404, PROJECT_NOT_FOUND)),
        (private_gem("Bearer PAT").header("Authorization", "Bearer pat-dev"), (401, UNAUTHORIZED), (404, PROJECT_NOT_FOUND)),
        (private_gem("Private-Token ignored").header("Private-Token", "pat-dev"), (404, PROJECT_NOT_FOUND), (404, PROJECT_NOT_FOUND)),
        (private_gem("Deploy-Token ignored").header("Deploy-Token", "deploy-read"), (404, PROJECT_NOT_FOUND), (404, PROJECT_NOT_FOUND)),
        (case("anonymous, no such project", rubygems("999", "gems/foo-1.0.0.gem")), (404, PROJECT_NOT_FOUND), (404, PROJECT_NOT_FOUND)),
        // Writes.
        (push("push anonymous on public", "10"), (401, UNAUTHORIZED), (401, UNAUTHORIZED)),
        (push("push anonymous on private", "20"), (401, UNAUTHORIZED), (401, UNAUTHORIZED)),
        (push("push anonymous, no such project", "999"), (401, UNAUTHORIZED), (401, UNAUTHORIZED)),
        (push("push raw invalid token", "20").header("Authorization", "nope"), (401, UNAUTHORIZED), (401, UNAUTHORIZED)),
        (push("push Developer", "20").header("Authorization", "pat-dev"), (201, CREATED), (201, CREATED)),
        (push("push Developer on public", "10").header("Authorization", "pat-dev"), (201, CREATED), (201, CREATED)),
        (push("push job token", "20").header("Authorization", "job-running"), (201, CREATED), (201, CREATED)),
        (push("push write deploy token", "20").header("Authorization", "deploy-write"), (201, CREATED), (201, CREATED)),
        (push("push Basic PAT", "20").header("Authorization", basic("me", "pat-dev")), (401, UNAUTHORIZED), (201, CREATED)),
        (push("push Reporter", "20").header("Authorization", "pat-reporter"), (403, FORBIDDEN), (403, FORBIDDEN)),
        (push("push read deploy token", "20").header("Authorization", "deploy-read"), (403, FORBIDDEN), (403, FORBIDDEN)),
        (push("push read_api PAT", "20").header("Authorization", "pat-reader"), (403, INSUFFICIENT_SCOPE), (403, INSUFFICIENT_SCOPE)),
        (push("push non-member on public", "10").header("Authorization", "pat-outsider"), (403, FORBIDDEN), (403, FORBIDDEN)),
        (push("push non-member on private", "20").header("Authorization", "pat-outsider"), (404, PROJECT_NOT_FOUND), (404, PROJECT_NOT_FOUND)),
        (push("push Guest on private", "20").header("Authorization", "pat-guest"), (403, FORBIDDEN), (403, FORBIDDEN)),
        (push("push Private-Token is anonymous", "20").header("Private-Token", "pat-dev"), (401, UNAUTHORIZED), (401, UNAUTHORIZED)),
    ];
    run_in_both_eras(&fake, &rows).await;
    // Accepted pushes are recorded: Developer, job and deploy token in each era (the
    // Basic one in 19.1 only); and one public push per era.
    assert_eq!(fake.uploads(PRIVATE).len(), 7);
    assert_eq!(fake.uploads(PUBLIC).len(), 2);
    assert!(fake
        .uploads(PRIVATE)
        .iter()
        .all(|body| body.as_ref() == b"a pushed gem"));
}

#[tokio::test]
async fn rubygems_endpoints_in_both_eras() {
    let fake = start().await;
    let public = |name, rest| case(name, rubygems("10", rest));
    let private = |name, rest| case(name, rubygems("20", rest));
    #[rustfmt::skip]
    let rows: Vec<EraRow> = vec![
        (public("spec index, public", "specs.4.8.gz"), (404, NOT_FOUND), (200, GZIP)),
        (private("spec index, anonymous on private", "specs.4.8.gz"), (404, PROJECT_NOT_FOUND), (404, PROJECT_NOT_FOUND)),
        (case("spec index of a project without gems", rubygems("30", "specs.4.8.gz")), (404, NOT_FOUND), (404, NOT_FOUND)),
        (public("compact index is not a spec index", "versions"), (404, NOT_FOUND), (400, r#"{"error":"file_name does not have a valid value"}"#)),
        // Validation runs before the project is even looked up.
        (private("compact index, anonymous on private", "versions"), (404, PROJECT_NOT_FOUND), (400, r#"{"error":"file_name does not have a valid value"}"#)),
        (public("gemspec", "quick/Marshal.4.8/foo-1.0.0.gemspec.rz"), (404, NOT_FOUND), (200, "rz foo 1.0.0")),
        (public("gemspec never generated", "quick/Marshal.4.8/foo-1.2.0.gemspec.rz"), (404, NOT_FOUND), (404, RECORD_NOT_FOUND)),
        (public("gemspec route needs a gemspec name", "quick/Marshal.4.8/foo"), (404, NOT_FOUND), (404, ROUTE_NOT_FOUND)),
        (public("gem, last upload wins", "gems/foo-1.0.0.gem"), (200, PUBLIC_GEM), (200, PUBLIC_GEM)),
        (public("gem file names carry no platform", "gems/bar-0.1.0-java.gem"), (404, RECORD_NOT_FOUND), (404, RECORD_NOT_FOUND)),
        (public("platform gem under its ruby name", "gems/bar-0.1.0.gem"), (200, "gem bar 0.1.0"), (200, "gem bar 0.1.0")),
        (public("dependencies probe", "api/v1/dependencies"), (200, "200"), (200, "200")),
        (public("dependencies probe, blank gems", "api/v1/dependencies?gems="), (200, "200"), (200, "200")),
        (public("dependencies, unknown name", "api/v1/dependencies?gems=foo,rails"), (404, r#"{"message":"rails not found"}"#), (404, r#"{"message":"rails not found"}"#)),
        (private("dependencies, anonymous on private", "api/v1/dependencies"), (404, PROJECT_NOT_FOUND), (404, PROJECT_NOT_FOUND)),
        (public("compact index info", "info/foo"), (404, ROUTE_NOT_FOUND), (404, ROUTE_NOT_FOUND)),
        (public("source root", ""), (404, ROUTE_NOT_FOUND), (404, ROUTE_NOT_FOUND)),
        (public("JSON dependencies", "api/v1/dependencies.json"), (404, ROUTE_NOT_FOUND), (404, ROUTE_NOT_FOUND)),
        (public("Workhorse-only authorize", "api/v1/gems/authorize").post("x").header("Authorization", "pat-dev"), (404, ROUTE_NOT_FOUND), (404, ROUTE_NOT_FOUND)),
    ];
    run_in_both_eras(&fake, &rows).await;
}

#[tokio::test]
async fn rubygems_success_answers() {
    let fake = start().await;
    let url = |rest: &str| format!("{}{}", fake.url(), rubygems("10", rest));

    let download = client::get(&url("gems/foo-1.0.0.gem"), &[]).await;
    assert_eq!(
        download.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(
        download.header("content-disposition"),
        Some("attachment; filename=\"foo-1.0.0.gem\"; filename*=UTF-8''foo-1.0.0.gem")
    );
    assert!(download
        .header("etag")
        .is_some_and(|etag| etag.starts_with("W/\"")));

    let head = client::request("HEAD", &url("gems/foo-1.0.0.gem"), &[], None).await;
    assert_eq!((head.status, head.body.len()), (200, 0));
    let length = PUBLIC_GEM.len().to_string();
    assert_eq!(head.header("content-length"), Some(length.as_str()));

    let error = client::get(&url("gems/nope-1.0.0.gem"), &[]).await;
    assert_eq!(
        error.header("content-type"),
        Some("application/octet-stream")
    );

    let spec = |name: &str, version: &str, platform: &str| {
        Value::Array(vec![
            Value::str(name),
            Value::gem_version(version),
            Value::str(platform),
        ])
    };
    let foo = |version: &str| spec("foo", version, "ruby");
    let index = |name: &'static str| async move {
        let response = client::get(&url(name), &[]).await;
        assert_eq!(response.status, 200, "{name}");
        gunzip(&response.body)
    };
    // Versions sort as Gem::Version does (1.2.0 before 1.10.0); both uploads of 1.0.0 are
    // listed; `-` is spelled `.pre.`.
    assert_eq!(
        index("specs.4.8.gz").await,
        marshal::dump(&Value::Array(vec![
            spec("bar", "0.1.0", "java"),
            foo("1.0.0"),
            foo("1.0.0"),
            foo("1.2.0"),
            foo("1.10.0"),
        ]))
    );
    assert_eq!(
        index("latest_specs.4.8.gz").await,
        marshal::dump(&Value::Array(vec![
            spec("bar", "0.1.0", "java"),
            foo("1.10.0")
        ]))
    );
    assert_eq!(
        index("prerelease_specs.4.8.gz").await,
        marshal::dump(&Value::Array(vec![foo("2.0.0.rc1"), foo("3.0.0.pre.beta")]))
    );

    let dependencies = client::get(&url("api/v1/dependencies?gems=bar,%20foo"), &[]).await;
    assert_eq!(
        dependencies.header("content-type"),
        Some("application/octet-stream")
    );
    // GitLab shares two objects, which Marshal writes once and then links: the requested
    // name (one per name asked) and the frozen `DEFAULT_PLATFORM`.
    let ruby = || Value::shared(0, Value::str("ruby"));
    let entry = |version: &str, dependencies: Vec<Value>| {
        Value::Hash(vec![
            (Value::sym("name"), Value::shared(2, Value::str("foo"))),
            (Value::sym("number"), Value::str(version)),
            (Value::sym("platform"), ruby()),
            (Value::sym("dependencies"), Value::Array(dependencies)),
        ])
    };
    let foo_dependencies = || {
        vec![
            Value::Array(vec![Value::str("bar"), Value::str(">= 0.1")]),
            Value::Array(vec![Value::str("rspec"), Value::str("~> 3.0")]),
        ]
    };
    let expected = Value::Array(vec![
        // The dependency API says `ruby` even for the java gem.
        Value::Hash(vec![
            (Value::sym("name"), Value::shared(1, Value::str("bar"))),
            (Value::sym("number"), Value::str("0.1.0")),
            (Value::sym("platform"), ruby()),
            (Value::sym("dependencies"), Value::Array(vec![])),
        ]),
        entry("1.0.0", foo_dependencies()),
        entry("1.10.0", vec![]),
        entry("1.2.0", vec![]),
        entry("3.0.0-beta", vec![]),
        entry("2.0.0.rc1", vec![]),
        entry("1.0.0", foo_dependencies()),
    ]);
    assert_eq!(dependencies.body, marshal::dump(&expected));
    // Bundler escapes the commas.
    let escaped = client::get(&url("api/v1/dependencies?gems=bar%2C%20foo"), &[]).await;
    assert_eq!(escaped.body, dependencies.body);

    let upload = client::request(
        "POST",
        &url("api/v1/gems"),
        &[("Authorization", "pat-dev")],
        Some(Bytes::from_static(b"gem bytes")),
    )
    .await;
    assert_eq!((upload.status, upload.text().as_str()), (201, CREATED));
    assert_eq!(
        upload.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(fake.uploads(PUBLIC), vec![Bytes::from_static(b"gem bytes")]);
    // An upload is not served until GitLab has processed it, which the fake never does.
    assert_eq!(client::get(&url("gems/package.gem"), &[]).await.status, 404);
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("gzip");
    out
}

#[tokio::test]
async fn object_store_redirects_send_downloads_elsewhere() {
    let fake = start_with(FakeGitLab::builder().object_store_redirects(true)).await;
    let gem_url = format!("{}{}", fake.url(), rubygems("20", "gems/foo-1.0.0.gem"));

    let redirect = client::get(&gem_url, &[("Authorization", "pat-dev")]).await;
    assert_eq!(redirect.status, 302);
    assert_eq!(redirect.header("content-type"), Some("text/plain"));
    let location = redirect.header("location").expect("a Location").to_owned();
    assert!(location.contains("/bucket/") && location.contains("?X-Amz-Signature="));
    assert!(
        !location.starts_with(&fake.url()),
        "the store is another authority"
    );
    assert_eq!(
        redirect.text(),
        format!("This resource has been moved temporarily to {location}.")
    );
    // Authorization is still checked before redirecting.
    assert_eq!(client::get(&gem_url, &[]).await.status, 404);

    let object = client::get(&location, &[]).await;
    assert_eq!((object.status, object.text().as_str()), (200, PRIVATE_GEM));
    assert_eq!(
        object.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(fake.object_store_hits(), 1);
    assert!(!fake.object_store_saw_credentials());

    let head = client::request("HEAD", &gem_url, &[("Authorization", "pat-dev")], None).await;
    assert_eq!(
        head.status, 303,
        "Grape redirects non-GET requests with 303"
    );

    let unsigned = location.split('?').next().expect("a path");
    assert_eq!(client::get(unsigned, &[]).await.status, 403);
    client::get(&location, &[("Authorization", "pat-dev")]).await;
    assert!(fake.object_store_saw_credentials());

    for rest in ["specs.4.8.gz", "quick/Marshal.4.8/foo-1.0.0.gemspec.rz"] {
        let response = client::get(&format!("{}{}", fake.url(), rubygems("10", rest)), &[]).await;
        assert_eq!(response.status, 302, "{rest}");
        let object = client::get(response.header("location").expect("a Location"), &[]).await;
        assert_eq!(object.status, 200, "{rest}");
    }
    // Go is never redirected.
    let list = client::get(
        &format!("{}{}", fake.url(), go("10", PUBLIC_MODULE, "list")),
        &[],
    )
    .await;
    assert_eq!(list.status, 200);

    fake.reset_hits();
    assert_eq!(
        (
            fake.object_store_hits(),
            fake.object_store_saw_credentials()
        ),
        (0, false)
    );
}

#[tokio::test]
async fn records_requests_as_received() {
    let fake = start().await;
    let list = go("10", PUBLIC_MODULE, "list");
    let url = format!("{}{list}", fake.url());
    client::get(&url, &[("X-Custom", "1")]).await;
    client::request("HEAD", &url, &[], None).await;
    client::get(
        &format!("{url}?private_token=pat-dev"),
        &[("Private-Token", "pat-dev")],
    )
    .await;
    client::get(&format!("{}/elsewhere", fake.url()), &[]).await;

    assert_eq!(fake.hits(&list), 2);
    assert_eq!(fake.hits(&format!("{list}?private_token=pat-dev")), 1);
    assert_eq!(fake.hits_prefix("/api/v4/projects/10/"), 3);
    assert_eq!(fake.total_hits(), 4);
    let headers = fake.last_request_headers(&list).expect("seen");
    let mut names: Vec<&str> = headers.keys().map(|name| name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["host", "private-token"],
        "the client adds nothing but Host"
    );
    assert_eq!(fake.last_request_headers("/never"), None);

    fake.reset_hits();
    assert_eq!((fake.total_hits(), fake.hits(&list)), (0, 0));
    assert_eq!(fake.last_request_headers(&list), None);
    fake.shutdown().await;
}

#[tokio::test]
async fn faults_are_applied_by_longest_prefix() {
    let fake = start().await;
    let path = go("10", PUBLIC_MODULE, "v1.0.0.zip");
    let url = format!("{}{path}", fake.url());
    let full = client::get(&url, &[]).await;

    fake.set_fault("/api/v4/projects/10/", Fault::Status(503));
    let faulted = client::get(&url, &[]).await;
    assert_eq!(
        (faulted.status, faulted.header("content-type")),
        (503, Some("text/plain"))
    );
    fake.set_fault(&path, Fault::Status(502));
    assert_eq!(
        client::get(&url, &[]).await.status,
        502,
        "the longer prefix wins"
    );
    assert_eq!(fake.hits(&path), 3, "faulted requests are counted");

    // Both truncations put the real headers and part of the body on the wire first.
    let length = full.body.len();
    fake.set_fault(&path, Fault::ResetMidBody);
    assert!(client::try_request("GET", &url, &[], None).await.is_err());
    let (head, body) = raw_get(&fake, &path).await;
    assert!(
        head.contains(&format!("content-length: {length}\r\n")),
        "{head}"
    );
    assert_eq!(body, full.body[..length / 2]);
    fake.set_fault(&path, Fault::WrongContentLength);
    assert!(client::try_request("GET", &url, &[], None).await.is_err());
    let (head, body) = raw_get(&fake, &path).await;
    assert!(
        head.contains(&format!("content-length: {}\r\n", length + 100)),
        "{head}"
    );
    assert_eq!(body, full.body);

    fake.set_fault(&path, Fault::SlowBody(Duration::from_millis(300)));
    let started = Instant::now();
    let slow = client::get(&url, &[]).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(slow.status, 200);
    assert_eq!(unzip(&slow.body), unzip(&full.body));

    fake.set_fault(&path, Fault::Hang);
    let hung = tokio::time::timeout(
        Duration::from_millis(300),
        client::try_request("GET", &url, &[], None),
    )
    .await;
    assert!(hung.is_err(), "no answer");

    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    fake.set_fault(&path, Fault::Hold(Arc::clone(&gate)));
    let held = tokio::spawn({
        let url = url.clone();
        async move { client::get(&url, &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!held.is_finished());
    gate.add_permits(1);
    assert_eq!(held.await.expect("joined").status, 200);

    fake.clear_faults();
    assert_eq!(client::get(&url, &[]).await.status, 200);
    // The shorter prefix still applies to everything else under it until cleared.
    fake.set_fault("/api/v4/projects/10/", Fault::Status(503));
    fake.clear_faults();
    assert_eq!(client::get(&url, &[]).await.status, 200);
}

/// Sends a bare HTTP/1.1 GET and reads until the server closes the connection: the head
/// as text, and the body bytes.
async fn raw_get(fake: &FakeGitLab, path: &str) -> (String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = fake.url().replace("http://", "");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: fake\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut received = Vec::new();
    // A reset after the data is fine: what matters is what arrived before it.
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received)).await;
    let split = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&received[..split]).into_owned();
    (head, received[split + 4..].to_vec())
}

#[tokio::test]
async fn down_drops_connections_until_up_again() {
    let fake = start().await;
    let url = format!("{}{}", fake.url(), go("10", PUBLIC_MODULE, "list"));
    fake.set_down(true);
    assert!(client::try_request("GET", &url, &[], None).await.is_err());
    fake.set_down(false);
    assert_eq!(client::get(&url, &[]).await.status, 200);
}

#[tokio::test]
async fn serves_h2c() {
    let fake = start().await;
    let url = format!("{}{}", fake.url(), go("10", PUBLIC_MODULE, "list"));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<Bytes>>();
    let response = client
        .get(url.parse().expect("a URI"))
        .await
        .expect("an h2c answer");
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn builder_sets_host_and_era() {
    let fake = FakeGitLab::builder()
        .host("git.internal")
        .era(RubyGemsEra::Pre19_1)
        .project(1, "a/b", Visibility::Public)
        .go_version(
            1,
            "",
            "v1.0.0",
            TIME,
            files(&[("go.mod", "module git.internal/a/b\n")]),
        )
        .gem(1, gem("foo", "1.0.0"))
        .start()
        .await;
    assert_eq!(fake.host(), "git.internal");
    let list: Response = client::get(
        &format!("{}{}", fake.url(), go("1", "git.internal/a/b", "list")),
        &[],
    )
    .await;
    assert_eq!((list.status, list.text().as_str()), (200, "v1.0.0"));
    let index = client::get(
        &format!("{}{}", fake.url(), rubygems("1", "specs.4.8.gz")),
        &[],
    )
    .await;
    assert_eq!(
        (index.status, index.text().as_str()),
        (404, NOT_FOUND),
        "the pre-19.1 stub"
    );
}

/// Golden bytes from Ruby 3.1's `Marshal.dump`.
#[test]
fn marshal_matches_ruby() {
    let ints = [
        0,
        1,
        -1,
        122,
        123,
        -123,
        -124,
        255,
        256,
        -256,
        -257,
        65535,
        65536,
        (1 << 30) - 1,
        -(1 << 30),
    ];
    let mut values = vec![Value::Nil, Value::Bool(true), Value::Bool(false)];
    values.extend(ints.map(Value::Int));
    assert_eq!(
        hex::encode(marshal::dump(&Value::Array(values))),
        "04085b173054466900690669fa697f69017b698069ff846901ff6902000169ff0069fefffe6902ffff69030000016904ffffff3f69fc000000c0"
    );
    // Symbols repeat as `;` links, the `E` encoding symbol included.
    let hash = |number: &str, dependencies: Vec<Value>| {
        Value::Hash(vec![
            (Value::sym("name"), Value::str("a")),
            (Value::sym("number"), Value::str(number)),
            (Value::sym("platform"), Value::str("ruby")),
            (Value::sym("dependencies"), Value::Array(dependencies)),
        ])
    };
    let dependencies = Value::Array(vec![
        hash(
            "1.0",
            vec![Value::Array(vec![Value::str("b"), Value::str(">= 0")])],
        ),
        hash("2.0", vec![]),
    ]);
    assert_eq!(
        hex::encode(marshal::dump(&dependencies)),
        "04085b077b093a096e616d6549220661063a0645543a0b6e756d626572492208312e30063b06543a0d706c6174666f726d49220972756279063b06543a11646570656e64656e636965735b065b0749220662063b06544922093e3d2030063b06547b093b0049220661063b06543b07492208322e30063b06543b0849220972756279063b06543b095b00"
    );
    let specs = Value::Array(vec![
        Value::Array(vec![
            Value::str("foo"),
            Value::gem_version("1.2.3"),
            Value::str("ruby"),
        ]),
        Value::Array(vec![
            Value::str("foo"),
            Value::gem_version("1.3.0.pre"),
            Value::str("ruby"),
        ]),
    ]);
    assert_eq!(
        hex::encode(marshal::dump(&specs)),
        "04085b075b08492208666f6f063a064554553a1147656d3a3a56657273696f6e5b0649220a312e322e33063b005449220972756279063b00545b08492208666f6f063b0054553b065b0649220e312e332e302e707265063b005449220972756279063b0054"
    );
    assert_eq!(
        hex::encode(marshal::dump(&Value::str("héllo"))),
        "040849220b68c3a96c6c6f063a064554"
    );
    // GitLab's dependency answer shares objects, which Ruby writes as `@` links:
    // P = "ruby".freeze; a = +"a"; b = +"b"
    // Marshal.dump([{name: a, number: +"1.0", platform: P, dependencies: [[+"b", +">= 0"]]},
    //   {name: a, number: +"2.0", platform: P, dependencies: []},
    //   {name: b, number: +"0.1", platform: P, dependencies: []}])
    let shared_hash = |name: Value, number: &str, dependencies: Vec<Value>| {
        Value::Hash(vec![
            (Value::sym("name"), name),
            (Value::sym("number"), Value::str(number)),
            (Value::sym("platform"), Value::shared(0, Value::str("ruby"))),
            (Value::sym("dependencies"), Value::Array(dependencies)),
        ])
    };
    let a = || Value::shared(1, Value::str("a"));
    let shared = Value::Array(vec![
        shared_hash(
            a(),
            "1.0",
            vec![Value::Array(vec![Value::str("b"), Value::str(">= 0")])],
        ),
        shared_hash(a(), "2.0", vec![]),
        shared_hash(Value::shared(2, Value::str("b")), "0.1", vec![]),
    ]);
    assert_eq!(
        hex::encode(marshal::dump(&shared)),
        "04085b087b093a096e616d6549220661063a0645543a0b6e756d626572492208312e30063b06543a0d706c6174666f726d49220972756279063b06543a11646570656e64656e636965735b065b0749220662063b06544922093e3d2030063b06547b093b0040073b07492208322e30063b06543b0840093b095b007b093b0049220662063b06543b07492208302e31063b06543b0840093b095b00"
    );
}
