//! The registry vocabulary: names, tags, digests, references, request paths and
//! manifests. Pure and I/O-free, so every parser here can be fuzzed.

mod digest;
mod error;
#[doc(hidden)]
pub mod fuzz;
mod image_ref;
mod manifest;
mod name;
mod path;
mod platform;
mod reference;
mod registry;

pub use digest::{Algorithm, Digest, Hasher};
pub use error::{ParseError, ParseErrorKind, Part};
pub use image_ref::ImageRef;
pub use manifest::Reference as ManifestReference;
pub use manifest::{MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, ManifestError, ManifestKind, ManifestView};
pub use name::RepoName;
pub use path::{ImagePath, PathError, V2Path};
pub use platform::Platform;
pub use reference::{Reference, Tag};
pub use registry::RegistryHost;
