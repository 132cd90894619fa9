//! The chunksnap v1 on-registry format: layer indexes ([`index`]), packs of compressed chunks
//! ([`pack`]), delta frames against earlier chunks ([`delta`]) and the image artifact manifest
//! tying them to an image ([`artifact`]), and the memory bound on decoding an index ([`budget`]).

pub mod artifact;
pub mod budget;
pub mod delta;
pub mod index;
pub mod pack;

pub use index::FormatError;
pub use pack::PackError;
