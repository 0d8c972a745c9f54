use std::fmt;

use super::{Digest, ParseError, ParseErrorKind, Part};

const MAX_TAG_LEN: usize = 128;

/// A tag, `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`. Case-sensitive: kept exactly
/// as sent. It can never be `.` or `..` or hold a `/`, so it is safe as a
/// file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn parse(s: &str) -> Result<Tag, ParseError> {
        let err = |kind| ParseError::new(Part::Tag, s, kind);
        let Some(first) = s.chars().next() else {
            return Err(err(ParseErrorKind::Empty));
        };
        if s.len() > MAX_TAG_LEN {
            return Err(err(ParseErrorKind::TooLong { max: MAX_TAG_LEN }));
        }
        if !(first.is_ascii_alphanumeric() || first == '_') {
            return Err(err(ParseErrorKind::BadCharacter(first)));
        }
        if let Some(bad) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
            return Err(err(ParseErrorKind::BadCharacter(bad)));
        }
        Ok(Tag(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tag an image reference without one means.
    pub fn latest() -> Tag {
        Tag(String::from("latest"))
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a manifest request names: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    /// Anything with a `:` is a digest (tags cannot hold one).
    pub fn parse(s: &str) -> Result<Reference, ParseError> {
        if s.contains(':') {
            Digest::parse(s).map(Reference::Digest)
        } else {
            Tag::parse(s).map(Reference::Tag)
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_keep_case() {
        assert_eq!(Reference::parse("V1.0-RC_1").unwrap().to_string(), "V1.0-RC_1");
    }

    #[test]
    fn rejects_bad_tags() {
        for t in ["", ".", "..", "-x", "a/b", "a b", &"a".repeat(129), "%2e"] {
            assert!(Tag::parse(t).is_err(), "{t}");
        }
        assert!(Tag::parse(&"a".repeat(128)).is_ok());
    }

    #[test]
    fn colon_means_digest() {
        assert!(matches!(Reference::parse("sha256:abc"), Err(e) if e.what == Part::Digest));
    }
}
