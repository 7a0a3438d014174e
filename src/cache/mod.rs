//! Cache tiers and the vocabulary of cache outcomes.

pub mod artifact_memory;
pub mod fill;
pub mod flight;
pub mod lease;
pub mod memory;
pub mod reader;

/// How a request was served; sent as `x-cache` and logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Served from cache; GitLab was not asked (or only asked whether the caller may read).
    Hit,
    /// Fetched from GitLab (and kept, where the route is cacheable and the answer a success).
    Miss,
    /// Joined a fetch already under way for another caller.
    Coalesced,
    /// Served from cache after GitLab confirmed it is still current (a `304`).
    Revalidated,
    /// Served from cache past its freshness because GitLab could not be asked (or while a
    /// background refresh runs).
    Stale,
    /// Passed to GitLab and back without touching the cache (uploads, uncacheable routes).
    Bypass,
    /// A cached answer existed, but GitLab refused this caller; GitLab's refusal was sent.
    Refused,
    /// Answered by the proxy itself (routing errors, operations endpoints).
    Local,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Coalesced => "coalesced",
            CacheOutcome::Revalidated => "revalidated",
            CacheOutcome::Stale => "stale",
            CacheOutcome::Bypass => "bypass",
            CacheOutcome::Refused => "refused",
            CacheOutcome::Local => "local",
        }
    }
}
