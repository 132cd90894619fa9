//! The chunksnap v1 on-registry format: layer indexes ([`index`]), packs of compressed chunks
//! ([`pack`]) and the image artifact manifest tying them to an image ([`artifact`]).

pub mod artifact;
pub mod index;
pub mod pack;

pub use index::FormatError;
pub use pack::PackError;
