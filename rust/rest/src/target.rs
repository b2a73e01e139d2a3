//! What a request names: `/<instance name>/ac/<hash>` or `/<instance name>/cas/<hash>`, as
//! Bazel forms them from `--remote_cache=http://localhost/<instance name>`.

use clientd_digest::{Digest, DigestError, InstanceName};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    ActionCache,
    Cas,
}

/// A request's target. The protocol names entries by their hash alone, so `name` is the hash
/// with size 0: the action-cache key as is (an action's size is never sent), and for blobs the
/// key [`crate::sizes::Sizes`] finds the size under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub instance: InstanceName,
    pub kind: Kind,
    pub name: Digest,
}

/// Why a request path names nothing: every message quotes the path.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathError {
    #[error(
        "{0:?} is not /<instance name>/ac/<hash> or /<instance name>/cas/<hash> \
         (Bazel: --remote_cache=http://localhost/local/<name> --remote_proxy=unix:<socket>)"
    )]
    Shape(String),
    /// A malformed instance name or hash.
    #[error("{path:?}: {source}")]
    Part {
        path: String,
        #[source]
        source: DigestError,
    },
}

/// Parses a request path.
pub(crate) fn parse(path: &str) -> Result<Target, PathError> {
    let shape = || PathError::Shape(path.to_string());
    let part = |source| PathError::Part {
        path: path.to_string(),
        source,
    };
    let (rest, hash) = path.rsplit_once('/').ok_or_else(shape)?;
    let (instance, kind) = rest.rsplit_once('/').ok_or_else(shape)?;
    let kind = match kind {
        "ac" => Kind::ActionCache,
        "cas" => Kind::Cas,
        _ => return Err(shape()),
    };
    let instance = instance.strip_prefix('/').unwrap_or(instance);
    let instance = InstanceName::new(instance).map_err(part)?;
    let name = Digest::parse(None, hash, 0).map_err(part)?;
    Ok(Target {
        instance,
        kind,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn instance_kind_and_hash() {
        let target = parse(&format!("/local/main/ac/{HASH}")).unwrap();
        assert_eq!(target.instance.as_str(), "local/main");
        assert_eq!(target.kind, Kind::ActionCache);
        assert_eq!(
            (target.name.hash_hex(), target.name.size()),
            (HASH.into(), 0)
        );
        let target = parse(&format!("/cas/{HASH}")).unwrap();
        assert_eq!((target.instance.as_str(), target.kind), ("", Kind::Cas));
    }

    #[test]
    fn malformed_paths_say_what_is_expected() {
        for (path, shape) in [
            ("/".to_string(), true),
            (format!("/local/blobs/{HASH}"), true),
            ("/local/ac/E3B0".to_string(), false),
            (format!("/local//main/cas/{HASH}"), false),
        ] {
            let e = parse(&path).unwrap_err();
            assert_eq!(matches!(e, PathError::Shape(_)), shape, "{e}");
            assert!(e.to_string().contains(&format!("{path:?}")), "{e}");
        }
    }
}
