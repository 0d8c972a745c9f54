use std::fmt;

use super::{ParseError, ParseErrorKind, Part, RepoName};

/// A registry host as clients name it: `docker.io`, `quay.io`,
/// `127.0.0.1:5000`, `localhost:5000`. Lower-cased (host names are
/// case-insensitive), so one registry has one cache key.
///
/// Bracketed IPv6 literals (`[fd00::1]:5000`) are accepted, so a request
/// naming one is refused by the address policy rather than by the grammar.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegistryHost(String);

const MAX_HOST_LEN: usize = 253 + 6;

impl RegistryHost {
    pub fn parse(s: &str) -> Result<RegistryHost, ParseError> {
        let err = |kind| ParseError::new(Part::RegistryHost, s, kind);
        if s.is_empty() {
            return Err(err(ParseErrorKind::Empty));
        }
        if s.len() > MAX_HOST_LEN {
            return Err(err(ParseErrorKind::TooLong { max: MAX_HOST_LEN }));
        }
        if let Some(rest) = s.strip_prefix('[') {
            return Self::parse_ipv6(s, rest);
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        check_port(s, port)?;
        for label in host.split('.') {
            let b = label.as_bytes();
            let (Some(first), Some(last)) = (b.first(), b.last()) else {
                return Err(err(ParseErrorKind::EmptyComponent));
            };
            if let Some(bad) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-')) {
                return Err(err(ParseErrorKind::BadCharacter(bad)));
            }
            if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
                return Err(err(ParseErrorKind::BadSeparator));
            }
        }
        Ok(RegistryHost(s.to_ascii_lowercase()))
    }

    /// `[v6]` or `[v6]:port`, `rest` being what follows the `[`.
    fn parse_ipv6(s: &str, rest: &str) -> Result<RegistryHost, ParseError> {
        let err = |kind| ParseError::new(Part::RegistryHost, s, kind);
        let (inner, after) = rest.split_once(']').ok_or_else(|| err(ParseErrorKind::BadSeparator))?;
        if let Some(bad) = inner.chars().find(|c| !(c.is_ascii_hexdigit() || matches!(c, ':' | '.'))) {
            return Err(err(ParseErrorKind::BadCharacter(bad)));
        }
        inner.parse::<std::net::Ipv6Addr>().map_err(|_| err(ParseErrorKind::BadSeparator))?;
        match after {
            "" => {}
            p => match p.strip_prefix(':') {
                Some(port) => check_port(s, Some(port))?,
                None => return Err(err(ParseErrorKind::BadSeparator)),
            },
        }
        Ok(RegistryHost(s.to_ascii_lowercase()))
    }

    /// Whether a path component names a registry rather than a repository:
    /// it has a `.` or `:`, or is `localhost` (Docker's rule).
    pub fn looks_like_host(component: &str) -> bool {
        component.contains(['.', ':']) || component == "localhost"
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Docker Hub's implicit `library/` namespace (`alpine` is `library/alpine`);
    /// every other registry takes names as they are.
    pub fn canonical_repo(&self, repo: RepoName) -> RepoName {
        if self.0 == "docker.io" { repo.with_library_prefix() } else { repo }
    }

    /// The host without a port (an IPv6 literal keeps its brackets).
    pub fn hostname(&self) -> &str {
        if self.0.starts_with('[') {
            return self.0.split_once(']').map_or(&self.0, |(h, _)| &self.0[..h.len() + 1]);
        }
        self.0.rsplit_once(':').map_or(&self.0, |(h, _)| h)
    }
}

fn check_port(s: &str, port: Option<&str>) -> Result<(), ParseError> {
    match port {
        Some(p) if !p.bytes().all(|b| b.is_ascii_digit()) || !matches!(p.parse::<u16>(), Ok(1..)) => {
            Err(ParseError::new(Part::RegistryHost, s, ParseErrorKind::BadPort))
        }
        _ => Ok(()),
    }
}

impl fmt::Display for RegistryHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_hosts() {
        for h in ["docker.io", "127.0.0.1:5000", "localhost", "registry-1.docker.io", "a.b:1"] {
            assert_eq!(RegistryHost::parse(h).unwrap().as_str(), h);
        }
        assert_eq!(RegistryHost::parse("Quay.IO").unwrap().as_str(), "quay.io");
        assert_eq!(RegistryHost::parse("h:80").unwrap().hostname(), "h");
        assert_eq!(RegistryHost::parse("[::1]:5000").unwrap().hostname(), "[::1]");
        assert_eq!(RegistryHost::parse("[FD00::1]").unwrap().as_str(), "[fd00::1]");
    }

    #[test]
    fn rejects_bad_hosts() {
        for h in [
            "",
            "..",
            "a..b",
            "-a.b",
            "a.b:0",
            "a.b:99999",
            "a.b:x",
            "a/b",
            "a b",
            "%2e",
            "[::1",
            "[x]",
            "[::1]x",
            "[::1]:0",
            "[1:2]",
        ] {
            assert!(RegistryHost::parse(h).is_err(), "{h}");
        }
    }
}
