//! Digests as the Remote Execution API names them.
//!
//! Everything that crosses a boundary (a gRPC request, a ByteStream resource name, a file name in the
//! cache or the mount) is parsed here, once, into a [`Digest`]; code past that point never re-checks
//! hex strings or sizes. Hostile input gets a [`DigestError`] that says what is wrong.

mod digest;
mod error;
mod function;
mod hasher;
mod instance;
mod map;
mod resource;
pub mod sha256tree;

pub use digest::{Digest, HashBytes};
pub use error::{truncate, DigestError};
pub use function::DigestFunction;
pub use hasher::{Hasher, ReadRanges};
pub use instance::{InstanceName, LOCAL_INSTANCE, RESERVED_SEGMENTS};
pub use map::{DigestMap, WordHasher};
pub use resource::{Compressor, ReadResource, WriteResource};
