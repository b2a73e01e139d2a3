//! ByteStream resource names (REAPI v2):
//! read `{instance}/blobs/{function/}{hash}/{size}`,
//! write `{instance}/uploads/{uuid}/blobs/{function/}{hash}/{size}{/metadata}`,
//! and the `compressed-blobs/{compressor}/` variants of both. Instance names may contain slashes;
//! they end at the first reserved segment.

use crate::digest::Digest;
use crate::error::truncate;
use crate::error::DigestError;
use crate::function::DigestFunction;
use crate::instance::{InstanceName, RESERVED_SEGMENTS};

/// Compressors of `compressed-blobs/` names (REAPI Compressor.Value, lowercase).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compressor {
    Identity,
    Zstd,
    Deflate,
    Brotli,
}

impl Compressor {
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "identity" => Some(Compressor::Identity),
            "zstd" => Some(Compressor::Zstd),
            "deflate" => Some(Compressor::Deflate),
            "brotli" => Some(Compressor::Brotli),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compressor::Identity => "identity",
            Compressor::Zstd => "zstd",
            Compressor::Deflate => "deflate",
            Compressor::Brotli => "brotli",
        }
    }
}

/// A parsed read resource name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResource {
    pub instance_name: InstanceName,
    /// None for plain `blobs/`.
    pub compressor: Option<Compressor>,
    pub digest: Digest,
}

/// A parsed write resource name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteResource {
    pub instance_name: InstanceName,
    pub uuid: String,
    pub compressor: Option<Compressor>,
    pub digest: Digest,
}

impl ReadResource {
    pub fn parse(name: &str) -> Result<Self, DigestError> {
        let mut p = Parser::new(name);
        let instance_name = p.instance_name()?;
        let (compressor, digest) = p.blob()?;
        p.end()?;
        Ok(ReadResource {
            instance_name,
            compressor,
            digest,
        })
    }

    pub fn to_resource_name(&self) -> String {
        join(
            &self.instance_name,
            &blob_part(self.compressor, &self.digest),
        )
    }
}

impl WriteResource {
    /// Parses a write name; trailing optional metadata segments are accepted and ignored.
    pub fn parse(name: &str) -> Result<Self, DigestError> {
        let mut p = Parser::new(name);
        let instance_name = p.instance_name()?;
        p.expect("uploads")?;
        let uuid = p.next("an upload id after uploads/")?;
        if uuid.is_empty() || RESERVED_SEGMENTS.contains(&uuid) {
            return Err(p.error(format!("upload id {uuid:?} is not allowed")));
        }
        let (compressor, digest) = p.blob()?;
        Ok(WriteResource {
            instance_name,
            uuid: uuid.to_string(),
            compressor,
            digest,
        })
    }

    pub fn to_resource_name(&self) -> String {
        let tail = format!(
            "uploads/{}/{}",
            self.uuid,
            blob_part(self.compressor, &self.digest)
        );
        join(&self.instance_name, &tail)
    }
}

fn blob_part(compressor: Option<Compressor>, digest: &Digest) -> String {
    match compressor {
        None => format!("blobs/{}", digest.resource_tail()),
        Some(c) => format!("compressed-blobs/{}/{}", c.name(), digest.resource_tail()),
    }
}

fn join(instance_name: &InstanceName, tail: &str) -> String {
    if instance_name.is_empty() {
        tail.to_string()
    } else {
        format!("{instance_name}/{tail}")
    }
}

struct Parser<'a> {
    name: &'a str,
    segments: std::iter::Peekable<std::str::Split<'a, char>>,
}

impl<'a> Parser<'a> {
    fn new(name: &'a str) -> Self {
        Parser {
            name,
            segments: name.split('/').peekable(),
        }
    }

    fn error(&self, why: impl Into<String>) -> DigestError {
        DigestError::BadResourceName {
            name: truncate(self.name),
            why: why.into(),
        }
    }

    fn next(&mut self, what: &str) -> Result<&'a str, DigestError> {
        self.segments
            .next()
            .ok_or_else(|| self.error(format!("ends where {what} was expected")))
    }

    fn expect(&mut self, keyword: &str) -> Result<(), DigestError> {
        let got = self.next(keyword)?;
        if got != keyword {
            return Err(self.error(format!("expected {keyword:?}, found {:?}", truncate(got))));
        }
        Ok(())
    }

    /// Segments up to the first `blobs`, `uploads` or `compressed-blobs` form the instance name;
    /// other reserved segments in it are refused by name.
    fn instance_name(&mut self) -> Result<InstanceName, DigestError> {
        let mut parts = Vec::new();
        while let Some(segment) = self.segments.peek() {
            if matches!(*segment, "blobs" | "uploads" | "compressed-blobs") {
                break;
            }
            parts.push(*segment);
            self.segments.next();
        }
        if self.segments.peek().is_none() {
            return Err(self.error("no blobs/, uploads/ or compressed-blobs/ segment"));
        }
        if parts.iter().any(|p| p.is_empty()) {
            return Err(self.error("instance name has an empty path segment"));
        }
        InstanceName::new(&parts.join("/")).map_err(|e| self.error(e.to_string()))
    }

    /// `blobs/{function/}{hash}/{size}` or `compressed-blobs/{compressor}/{function/}{hash}/{size}`.
    fn blob(&mut self) -> Result<(Option<Compressor>, Digest), DigestError> {
        let compressor = match self.next("blobs/ or compressed-blobs/")? {
            "blobs" => None,
            "compressed-blobs" => {
                let name = self.next("a compressor")?;
                Some(Compressor::from_name(name).ok_or_else(|| {
                    self.error(format!("unknown compressor {:?}", truncate(name)))
                })?)
            }
            other => {
                return Err(self.error(format!(
                    "expected \"blobs\" or \"compressed-blobs\", found {:?}",
                    truncate(other)
                )))
            }
        };
        let mut hash = self.next("a hash")?;
        let mut function = None;
        if let Some(f) = DigestFunction::from_name(hash) {
            function = Some(f);
            hash = self.next("a hash")?;
        }
        let size = self.next("a size")?;
        let size = Digest::parse_size(size).map_err(|e| self.error(e.to_string()))?;
        let digest = Digest::parse(function, hash, size).map_err(|e| self.error(e.to_string()))?;
        Ok((compressor, digest))
    }

    fn end(&mut self) -> Result<(), DigestError> {
        match self.segments.next() {
            None => Ok(()),
            Some(extra) => Err(self.error(format!(
                "unexpected segment {:?} after the size",
                truncate(extra)
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn read_names() {
        let r = ReadResource::parse(&format!("blobs/{H}/0")).unwrap();
        assert_eq!(r.instance_name.as_str(), "");
        assert_eq!(r.digest.function(), DigestFunction::Sha256);
        let r = ReadResource::parse(&format!("local/a/b/blobs/{H}/0")).unwrap();
        assert_eq!(r.instance_name.as_str(), "local/a/b");
        assert_eq!(r.to_resource_name(), format!("local/a/b/blobs/{H}/0"));
        let r = ReadResource::parse(&format!("x/blobs/blake3/{H}/0")).unwrap();
        assert_eq!(r.digest.function(), DigestFunction::Blake3);
        assert_eq!(r.to_resource_name(), format!("x/blobs/blake3/{H}/0"));
        let r = ReadResource::parse(&format!("x/blobs/sha256tree/{H}/0")).unwrap();
        assert_eq!(r.digest.function(), DigestFunction::Sha256Tree);
        assert_eq!(r.to_resource_name(), format!("x/blobs/sha256tree/{H}/0"));
        let r = ReadResource::parse(&format!("x/compressed-blobs/zstd/{H}/0")).unwrap();
        assert_eq!(r.compressor, Some(Compressor::Zstd));
        assert_eq!(
            r.to_resource_name(),
            format!("x/compressed-blobs/zstd/{H}/0")
        );
        // Explicit names of the old functions are accepted and written canonically.
        let r = ReadResource::parse(&format!("blobs/sha256/{H}/0")).unwrap();
        assert_eq!(r.to_resource_name(), format!("blobs/{H}/0"));
    }

    #[test]
    fn write_names() {
        let w =
            WriteResource::parse(&format!("local/p/uploads/u-1/blobs/{H}/0/some/meta")).unwrap();
        assert_eq!(w.instance_name.as_str(), "local/p");
        assert_eq!(w.uuid, "u-1");
        assert_eq!(
            w.to_resource_name(),
            format!("local/p/uploads/u-1/blobs/{H}/0")
        );
        let w = WriteResource::parse(&format!("uploads/u/compressed-blobs/zstd/{H}/0")).unwrap();
        assert_eq!(w.instance_name.as_str(), "");
        assert_eq!(w.compressor, Some(Compressor::Zstd));
    }

    #[test]
    fn hostile_names_refused_with_reason() {
        let cases = [
            ("".to_string(), "no blobs/"),
            ("local".to_string(), "no blobs/"),
            (format!("/blobs/{H}/0"), "empty path segment"),
            (format!("a//b/blobs/{H}/0"), "empty path segment"),
            (format!("a/actions/blobs/{H}/0"), "reserved"),
            (format!("blobs/{H}"), "a size"),
            (format!("blobs/{H}/-1"), "size"),
            (format!("blobs/{H}/0/extra"), "unexpected segment"),
            ("blobs/zz/0".to_string(), "cannot infer"),
            (format!("blobs/md5/{H}/0"), "hex"),
            (format!("compressed-blobs/lz4/{H}/0"), "unknown compressor"),
            (format!("uploads/u/blobs/{H}/0"), "expected \"blobs\""),
        ];
        for (name, why) in &cases {
            let err = ReadResource::parse(name).unwrap_err().to_string();
            assert!(err.contains(why), "{name}: {err}");
        }
        let writes = [
            (format!("blobs/{H}/0"), "expected \"uploads\""),
            ("x/uploads".to_string(), "upload id"),
            (format!("uploads/blobs/{H}/0"), "not allowed"),
            (format!("uploads/u/{H}/0"), "expected \"blobs\""),
        ];
        for (name, why) in &writes {
            let err = WriteResource::parse(name).unwrap_err().to_string();
            assert!(err.contains(why), "{name}: {err}");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let alphabet = b"ab/0123456789-eblobsuploadcompressed";
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 80) as usize;
            let s: String = (0..len)
                .map(|i| alphabet[((seed >> (i % 50)) as usize + i) % alphabet.len()] as char)
                .collect();
            let _ = ReadResource::parse(&s);
            let _ = WriteResource::parse(&s);
        }
    }
}
