//! Tag freshness: when a cached tag may be served as is, and when it must be
//! re-checked upstream. Pure: the cache asks, this answers.

use std::time::Duration;

use globset::{Glob, GlobMatcher};

/// How long a cached tag stays good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// Immutable once cached (the default, as the reference server does).
    Never,
    /// Re-checked on every request.
    Always,
    /// Re-checked when older than this.
    After(Duration),
}

/// One `tagPolicy` rule: a glob over `registry/repository:tag`.
#[derive(Debug, Clone)]
pub struct TagRule {
    pub pattern: String,
    matcher: GlobMatcher,
    pub refresh: Refresh,
}

impl TagRule {
    pub fn new(pattern: &str, refresh: Refresh) -> Result<TagRule, globset::Error> {
        let matcher = Glob::new(pattern)?.compile_matcher();
        Ok(TagRule { pattern: pattern.to_owned(), matcher, refresh })
    }
}

/// Whether a re-check holds up the request or runs behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Revalidate {
    #[default]
    Inline,
    /// Serve the cached digest at once and re-check in the background.
    Background,
}

#[derive(Debug, Clone, Default)]
pub struct TagPolicy {
    rules: Vec<TagRule>,
    always_pull_latest: bool,
}

impl TagPolicy {
    pub fn new(rules: Vec<TagRule>, always_pull_latest: bool) -> TagPolicy {
        TagPolicy { rules, always_pull_latest }
    }

    /// The rule for `registry/repo:tag`: the first matching rule, else
    /// `always` for `latest` under `alwaysPullLatest`, else `never`.
    pub fn refresh(&self, registry: &str, repo: &str, tag: &str) -> Refresh {
        // No rules (the default): no key to build on every tag hit.
        if !self.rules.is_empty() {
            let key = format!("{registry}/{repo}:{tag}");
            if let Some(rule) = self.rules.iter().find(|r| r.matcher.is_match(&key)) {
                return rule.refresh;
            }
        }
        if self.always_pull_latest && tag == "latest" { Refresh::Always } else { Refresh::Never }
    }

    /// Whether a tag checked `age` ago must be re-checked now.
    pub fn is_stale(&self, registry: &str, repo: &str, tag: &str, age: Duration) -> bool {
        match self.refresh(registry, repo, tag) {
            Refresh::Never => false,
            Refresh::Always => true,
            Refresh::After(ttl) => age >= ttl,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &[(&str, Refresh)], latest: bool) -> TagPolicy {
        TagPolicy::new(rules.iter().map(|(p, r)| TagRule::new(p, *r).unwrap()).collect(), latest)
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn default_is_immutable() {
        let p = TagPolicy::default();
        assert!(!p.is_stale("docker.io", "library/alpine", "latest", HOUR * 1000));
    }

    #[test]
    fn always_pull_latest_only_touches_latest() {
        let p = policy(&[], true);
        assert!(p.is_stale("docker.io", "library/alpine", "latest", Duration::ZERO));
        assert!(!p.is_stale("docker.io", "library/alpine", "3.20", HOUR));
    }

    #[test]
    fn first_matching_rule_wins() {
        let p = policy(
            &[
                ("docker.io/library/*:3.*", Refresh::Never),
                ("docker.io/*", Refresh::After(HOUR)),
                ("*:dev", Refresh::Always),
            ],
            true,
        );
        assert!(!p.is_stale("docker.io", "library/alpine", "3.20", HOUR * 10));
        assert!(!p.is_stale("docker.io", "library/alpine", "latest", HOUR / 2));
        assert!(p.is_stale("docker.io", "library/alpine", "latest", HOUR));
        assert!(p.is_stale("quay.io", "org/app", "dev", Duration::ZERO));
        assert!(!p.is_stale("quay.io", "org/app", "v1", HOUR * 10));
    }
}
