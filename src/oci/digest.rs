use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

use super::{ParseError, ParseErrorKind, Part};

/// The hash algorithms a content digest may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    pub fn hasher(self) -> Hasher {
        match self {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
}

/// An incremental hash that finishes into a [`Digest`].
pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest(Raw::Sha256(h.finalize().into())),
            Hasher::Sha512(h) => Digest(Raw::Sha512(Box::new(h.finalize().into()))),
        }
    }
}

/// A content digest such as `sha256:9f86…`. Only lowercase hex of the exact
/// length is accepted, so a digest is always safe to use as a file name.
///
/// Kept as the hash's bytes, not its hex: the index holds several digests
/// per cached image (keys, references, links), and a sha256 inline is 40
/// bytes where a hex `String` took 104 and an allocation. Ordered as its
/// text is (algorithm, then lowercase hex, which sorts as the bytes do).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(Raw);

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Raw {
    Sha256([u8; 32]),
    Sha512(Box<[u8; 64]>),
}

impl Digest {
    pub fn parse(s: &str) -> Result<Digest, ParseError> {
        let err = |kind| ParseError::new(Part::Digest, s, kind);
        let (alg, hex) = s.split_once(':').ok_or_else(|| err(ParseErrorKind::MissingAlgorithm))?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => {
                return Err(err(ParseErrorKind::BadDigestAlgorithm(other.chars().take(32).collect())));
            }
        };
        if hex.len() != algorithm.hex_len() {
            return Err(err(ParseErrorKind::BadDigestLength { expected: algorithm.hex_len() }));
        }
        // Lowercase only: the hex crate would take uppercase too.
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(err(ParseErrorKind::BadDigestHex));
        }
        let raw = match algorithm {
            Algorithm::Sha256 => {
                let mut bytes = [0; 32];
                hex::decode_to_slice(hex, &mut bytes).map_err(|_| err(ParseErrorKind::BadDigestHex))?;
                Raw::Sha256(bytes)
            }
            Algorithm::Sha512 => {
                let mut bytes = Box::new([0; 64]);
                hex::decode_to_slice(hex, &mut bytes[..]).map_err(|_| err(ParseErrorKind::BadDigestHex))?;
                Raw::Sha512(bytes)
            }
        };
        Ok(Digest(raw))
    }

    /// The digest of `data` under `algorithm`.
    pub fn of(algorithm: Algorithm, data: &[u8]) -> Digest {
        let mut h = algorithm.hasher();
        h.update(data);
        h.finish()
    }

    pub fn algorithm(&self) -> Algorithm {
        match self.0 {
            Raw::Sha256(_) => Algorithm::Sha256,
            Raw::Sha512(_) => Algorithm::Sha512,
        }
    }

    fn bytes(&self) -> &[u8] {
        match &self.0 {
            Raw::Sha256(b) => b,
            Raw::Sha512(b) => &b[..],
        }
    }

    /// The encoded part, lowercase hex of the algorithm's exact length.
    pub fn hex(&self) -> Hex {
        let mut hex = Hex { buf: [0; 128], len: self.bytes().len() * 2 };
        // The buffer is sized for the longest digest, so encoding cannot fail.
        let _ = hex::encode_to_slice(self.bytes(), &mut hex.buf[..hex.len]);
        hex
    }
}

/// A digest's hex, on the stack (see [`Digest::hex`]).
#[derive(Clone, Copy)]
pub struct Hex {
    buf: [u8; 128],
    len: usize,
}

impl std::ops::Deref for Hex {
    type Target = str;
    fn deref(&self) -> &str {
        // Always ASCII hex (written by `hex::encode_to_slice`).
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl AsRef<str> for Hex {
    fn as_ref(&self) -> &str {
        self
    }
}

impl AsRef<std::path::Path> for Hex {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&**self)
    }
}

impl AsRef<std::ffi::OsStr> for Hex {
    fn as_ref(&self) -> &std::ffi::OsStr {
        std::ffi::OsStr::new(&**self)
    }
}

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl fmt::Debug for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm().as_str(), self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA256_EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    macro_rules! rejects {
        ($name:ident, $input:expr, $kind:pat) => {
            #[test]
            fn $name() {
                let e = Digest::parse($input).unwrap_err();
                assert!(matches!(e.kind, $kind), "{e}");
            }
        };
    }

    #[test]
    fn round_trips() {
        let d = Digest::parse(SHA256_EMPTY).unwrap();
        assert_eq!(d.to_string(), SHA256_EMPTY);
        assert_eq!(Digest::of(Algorithm::Sha256, b""), d);
    }

    #[test]
    fn orders_as_its_text_does() {
        let mut digests: Vec<Digest> = (0..50u8).map(|i| Digest::of(Algorithm::Sha256, &[i])).collect();
        digests.push(Digest::of(Algorithm::Sha512, b"x"));
        let mut by_text = digests.clone();
        by_text.sort_by_key(|d| d.to_string());
        digests.sort();
        assert_eq!(digests, by_text);
        assert_eq!(std::mem::size_of::<Digest>(), 40, "a sha256 digest stays inline");
    }

    #[test]
    fn sha512_is_accepted() {
        let d = Digest::of(Algorithm::Sha512, b"x");
        assert_eq!(Digest::parse(&d.to_string()).unwrap(), d);
    }

    rejects!(md5, "md5:d41d8cd98f00b204e9800998ecf8427e", ParseErrorKind::BadDigestAlgorithm(_));
    rejects!(short, "sha256:abc", ParseErrorKind::BadDigestLength { expected: 64 });
    rejects!(
        upper_hex,
        "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
        ParseErrorKind::BadDigestHex
    );
    rejects!(no_colon, "sha256", ParseErrorKind::MissingAlgorithm);
    rejects!(
        traversal,
        "sha256:../../../../etc/passwdaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ParseErrorKind::BadDigestHex
    );
}
