//! Manifests: YAML files declaring objects. Reading them (with positions),
//! decoding strictly, validating, and collecting them from files and
//! directories.

mod decode;
mod load;
pub mod schema;
pub mod validate;
pub mod yaml;

pub use decode::{
    AnyObject, Decoded, MAX_FILE_BYTES, ManifestError, Source, decode_file, decode_single,
};
pub use load::{LoadOptions, Loaded, load_paths};
