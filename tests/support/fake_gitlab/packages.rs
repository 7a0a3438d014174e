//! The Packages API, `GET /projects/:id/packages` (reference compact-index.md §4.3): the
//! project's packages as JSON, offset-paginated. Authenticated like any REST endpoint that
//! allows job tokens: `Private-Token`, Bearer, `Job-Token`; never deploy tokens, never Basic.

use http::header::HeaderName;
use http::StatusCode;

use super::auth::{self, Call};
use super::model::Instance;
use super::reply::{Api, Reply};

const DEFAULT_PER_PAGE: usize = 20;
const MAX_PER_PAGE: usize = 100;

pub(super) fn answer(instance: &Instance, call: &Call<'_>, project_id: &str) -> Reply {
    let caller = match auth::api_caller(instance, call, false) {
        Ok(caller) => caller,
        Err(reply) => return reply,
    };
    let project = match auth::project_for_read(instance, &caller, project_id, Api::Rest) {
        Ok(project) => project,
        Err(reply) => return reply,
    };
    let wanted_type = call.query.get("package_type");
    if wanted_type.is_some_and(|t| t != "rubygems" && t != "golang" && t != "generic") {
        return Reply::invalid_param(Api::Rest, "package_type");
    }
    let page: usize = call
        .query
        .get("page")
        .and_then(|p| p.parse().ok())
        .filter(|&p| p > 0)
        .unwrap_or(1);
    let per_page: usize = call
        .query
        .get("per_page")
        .and_then(|p| p.parse().ok())
        .filter(|&p| p > 0)
        .unwrap_or(DEFAULT_PER_PAGE)
        .min(MAX_PER_PAGE);
    // Every package the fake holds is a RubyGems package, in creation (declaration) order.
    let all: Vec<serde_json::Value> = if wanted_type.is_some_and(|t| t != "rubygems") {
        Vec::new()
    } else {
        project
            .packages
            .iter()
            .enumerate()
            .map(|(index, package)| {
                serde_json::json!({
                    "id": project.id * 1000 + index as u64,
                    "name": package.gem.name,
                    "version": package.gem.version,
                    "package_type": "rubygems",
                    "status": "default",
                    "created_at": format!("2024-01-01T00:{:02}:00.000Z", index % 60),
                    "tags": [],
                })
            })
            .collect()
    };
    let total = all.len();
    let total_pages = total.div_ceil(per_page).max(1);
    let items: Vec<&serde_json::Value> = all
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    let next = if page < total_pages {
        (page + 1).to_string()
    } else {
        String::new()
    };
    let prev = if page > 1 {
        (page - 1).to_string()
    } else {
        String::new()
    };
    let body = serde_json::to_string(&items).expect("JSON of JSON values");
    Reply::new(StatusCode::OK, "application/json", body)
        .with_header(HeaderName::from_static("x-page"), &page.to_string())
        .with_header(HeaderName::from_static("x-per-page"), &per_page.to_string())
        .with_header(HeaderName::from_static("x-total"), &total.to_string())
        .with_header(
            HeaderName::from_static("x-total-pages"),
            &total_pages.to_string(),
        )
        .with_header(HeaderName::from_static("x-next-page"), &next)
        .with_header(HeaderName::from_static("x-prev-page"), &prev)
}
