use std::fmt;

/// A piece of client or upstream input that is not valid vocabulary.
///
/// Keeps the offending text so messages read "invalid repository name 'Foo':
/// uppercase letter 'F'".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub what: Part,
    pub input: String,
    pub kind: ParseErrorKind,
}

/// Which piece of vocabulary failed to parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Digest,
    Tag,
    RegistryHost,
    RepoName,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Digest => "digest",
            Part::Tag => "tag",
            Part::RegistryHost => "registry host",
            Part::RepoName => "repository name",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseErrorKind {
    Empty,
    EmptyComponent,
    BadCharacter(char),
    UpperCase(char),
    BadSeparator,
    TooLong { max: usize },
    BadDigestAlgorithm(String),
    BadDigestLength { expected: usize },
    BadDigestHex,
    MissingAlgorithm,
    BadPort,
}

impl ParseError {
    pub(crate) fn new(what: Part, input: &str, kind: ParseErrorKind) -> Self {
        // Bound what we echo back: the input may be a hostile multi-kilobyte path.
        let input: String = input.chars().take(300).collect();
        ParseError { what, input, kind }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {} '{}': ", self.what, self.input)?;
        match &self.kind {
            ParseErrorKind::Empty => write!(f, "empty"),
            ParseErrorKind::EmptyComponent => write!(f, "empty path component"),
            ParseErrorKind::BadCharacter(c) => write!(f, "character {c:?} is not allowed"),
            ParseErrorKind::UpperCase(c) => write!(f, "uppercase letter {c:?} is not allowed"),
            ParseErrorKind::BadSeparator => {
                write!(f, "components must start and end with a letter or digit")
            }
            ParseErrorKind::TooLong { max } => write!(f, "longer than {max} characters"),
            ParseErrorKind::BadDigestAlgorithm(a) => {
                write!(f, "unsupported digest algorithm '{a}' (sha256 and sha512 are)")
            }
            ParseErrorKind::BadDigestLength { expected } => {
                write!(f, "expected {expected} hex characters")
            }
            ParseErrorKind::BadDigestHex => write!(f, "digest must be lowercase hex"),
            ParseErrorKind::MissingAlgorithm => write!(f, "expected '<algorithm>:<hex>'"),
            ParseErrorKind::BadPort => write!(f, "port must be a number from 1 to 65535"),
        }
    }
}

impl std::error::Error for ParseError {}
