use std::fmt;

use super::{ParseError, ParseErrorKind, Part};

/// Longest repository name accepted, as distribution does.
const MAX_NAME_LEN: usize = 255;

/// A repository name under a registry (`library/alpine`, `team/sub/app`), any
/// number of components, each following the OCI distribution grammar
/// `[a-z0-9]+((\.|_|__|[-]+)[a-z0-9]+)*`.
///
/// The grammar admits no `.`/`..` component, no `%` and no empty component,
/// so a valid name is always safe to use as a relative path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    pub fn parse(s: &str) -> Result<RepoName, ParseError> {
        let err = |kind| ParseError::new(Part::RepoName, s, kind);
        if s.is_empty() {
            return Err(err(ParseErrorKind::Empty));
        }
        if s.len() > MAX_NAME_LEN {
            return Err(err(ParseErrorKind::TooLong { max: MAX_NAME_LEN }));
        }
        for component in s.split('/') {
            check_component(component).map_err(err)?;
        }
        Ok(RepoName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Number of `/`-separated components.
    pub fn depth(&self) -> usize {
        self.0.split('/').count()
    }

    /// Docker Hub's implicit namespace: `alpine` is `library/alpine`.
    pub fn with_library_prefix(&self) -> RepoName {
        if self.depth() == 1 { RepoName(format!("library/{}", self.0)) } else { self.clone() }
    }
}

fn check_component(c: &str) -> Result<(), ParseErrorKind> {
    let bytes = c.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return Err(ParseErrorKind::EmptyComponent);
    };
    if let Some(bad) = c.chars().find(|ch| !matches!(ch, 'a'..='z' | '0'..='9' | '.' | '_' | '-')) {
        return Err(if bad.is_ascii_uppercase() {
            ParseErrorKind::UpperCase(bad)
        } else {
            ParseErrorKind::BadCharacter(bad)
        });
    }
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return Err(ParseErrorKind::BadSeparator);
    }
    // Separators between alphanumeric runs: one '.', one or two '_', or any number of '-'.
    for sep in c.split(|ch: char| ch.is_ascii_alphanumeric()).filter(|s| !s.is_empty()) {
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return Err(ParseErrorKind::BadSeparator);
        }
    }
    Ok(())
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! parses {
        ($name:ident, $input:expr) => {
            #[test]
            fn $name() {
                assert_eq!(RepoName::parse($input).unwrap().as_str(), $input);
            }
        };
    }
    macro_rules! rejects {
        ($name:ident, $input:expr, $kind:pat) => {
            #[test]
            fn $name() {
                let e = RepoName::parse($input).unwrap_err();
                assert!(matches!(e.kind, $kind), "{e}");
            }
        };
    }

    parses!(single, "alpine");
    parses!(deep, "a/b/c/d/e/f");
    parses!(separators, "a.b_c__d---e/f-g");
    rejects!(empty, "", ParseErrorKind::Empty);
    rejects!(dot_dot, "a/../b", ParseErrorKind::BadSeparator);
    rejects!(single_dot, "./a", ParseErrorKind::BadSeparator);
    rejects!(encoded_dots, "%2e%2e/a", ParseErrorKind::BadCharacter('%'));
    rejects!(empty_component, "a//b", ParseErrorKind::EmptyComponent);
    rejects!(trailing_slash, "a/", ParseErrorKind::EmptyComponent);
    rejects!(upper, "Alpine", ParseErrorKind::UpperCase('A'));
    rejects!(triple_underscore, "a___b", ParseErrorKind::BadSeparator);
    rejects!(mixed_separator, "a.-b", ParseErrorKind::BadSeparator);
    rejects!(colon, "a:b", ParseErrorKind::BadCharacter(':'));
    rejects!(backslash, "a\\b", ParseErrorKind::BadCharacter('\\'));

    #[test]
    fn too_long() {
        let long = "a".repeat(256);
        assert!(matches!(RepoName::parse(&long).unwrap_err().kind, ParseErrorKind::TooLong { .. }));
    }

    #[test]
    fn library_prefix() {
        let n = RepoName::parse("alpine").unwrap();
        assert_eq!(n.with_library_prefix().as_str(), "library/alpine");
        let n = RepoName::parse("org/app").unwrap();
        assert_eq!(n.with_library_prefix().as_str(), "org/app");
    }
}
