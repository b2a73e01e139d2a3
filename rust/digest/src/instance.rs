use crate::error::truncate;
use crate::error::DigestError;
use std::sync::Arc;

/// Path segments REAPI reserves: an instance name may not contain them, because ByteStream
/// resource names are split at the first of them.
pub const RESERVED_SEGMENTS: [&str; 7] = [
    "blobs",
    "uploads",
    "actions",
    "actionResults",
    "operations",
    "capabilities",
    "compressed-blobs",
];

/// The instance name prefix clientd reserves for its own cache: `local` and `local/...` are
/// routed to the local CAS and action cache, never to a cluster.
pub const LOCAL_INSTANCE: &str = "local";

/// An instance name that has been checked: empty, or `/`-separated non-empty segments none of
/// which is reserved, `.` or `..`. Every edge (a gRPC request, a ByteStream resource name, an HTTP
/// path, a cas/ path, StartBuildArgs, the configuration) makes one with [`InstanceName::new`], so
/// the stores behind them never see a name that has not been. Cloning is cheap. The default is
/// the empty name.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceName(Arc<str>);

impl InstanceName {
    /// Checks `name`.
    pub fn new(name: &str) -> Result<InstanceName, DigestError> {
        validate(name)?;
        Ok(InstanceName(name.into()))
    }

    /// The local cache's own instance name, `local`.
    pub fn local() -> InstanceName {
        InstanceName(LOCAL_INSTANCE.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether this is the local cache's name (`local` or under `local/`), as opposed to a
    /// cluster's: the one namespace clientd reserves for itself.
    pub fn is_local(&self) -> bool {
        self.0
            .strip_prefix(LOCAL_INSTANCE)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// What follows `prefix` when this name begins with its whole segments (`a.example.com/x`
    /// under `a.example.com` is `x`; under itself, the empty name; every name is under the empty
    /// name), else None. Whole segments of a checked name are a checked name.
    pub fn under(&self, prefix: &InstanceName) -> Option<InstanceName> {
        let rest = self.0.strip_prefix(prefix.as_str())?;
        if rest.is_empty() {
            return Some(InstanceName::default());
        }
        if prefix.is_empty() {
            return Some(self.clone());
        }
        rest.strip_prefix('/').map(|rest| InstanceName(rest.into()))
    }

    /// How many `/`-separated segments the name has (none when empty).
    pub fn segments(&self) -> usize {
        if self.0.is_empty() {
            0
        } else {
            self.0.split('/').count()
        }
    }
}

impl std::str::FromStr for InstanceName {
    type Err = DigestError;

    fn from_str(name: &str) -> Result<InstanceName, DigestError> {
        InstanceName::new(name)
    }
}

impl std::fmt::Display for InstanceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for InstanceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for InstanceName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Checks an instance name: empty, or `/`-separated non-empty segments none of which is reserved.
fn validate(name: &str) -> Result<(), DigestError> {
    if name.is_empty() {
        return Ok(());
    }
    let bad = |why: String| DigestError::BadInstanceName {
        name: truncate(name),
        why,
    };
    for segment in name.split('/') {
        if segment.is_empty() {
            return Err(bad("empty path segment".into()));
        }
        if RESERVED_SEGMENTS.contains(&segment) {
            return Err(bad(format!("segment {segment:?} is reserved")));
        }
        if segment == "." || segment == ".." {
            return Err(bad(format!("segment {segment:?} is not allowed")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names() {
        for good in ["", "local", "local/my/project", "cluster.example.com/hello"] {
            InstanceName::new(good).unwrap();
        }
        for bad in [
            "/",
            "a/",
            "/a",
            "a//b",
            "a/blobs",
            "operations",
            "a/../b",
            "x/actionResults/y",
        ] {
            assert!(InstanceName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_local_namespace_is_local_and_its_subnames_only() {
        for local in ["local", "local/a", "local/a/b"] {
            assert!(InstanceName::new(local).unwrap().is_local(), "{local}");
        }
        for other in [
            "",
            "localhost",
            "locals/a",
            "a/local",
            "cluster.example.com",
        ] {
            assert!(!InstanceName::new(other).unwrap().is_local(), "{other}");
        }
    }

    #[test]
    fn under_a_prefix_is_what_follows_its_whole_segments() {
        let name = |s: &str| InstanceName::new(s).unwrap();
        let host = name("a.example.com/x/y");
        assert_eq!(host.under(&name("a.example.com")), Some(name("x/y")));
        assert_eq!(host.under(&name("a.example.com/x")), Some(name("y")));
        assert_eq!(host.under(&host), Some(name("")));
        assert_eq!(host.under(&name("")), Some(host.clone()));
        assert_eq!(host.under(&name("a.example")), None);
        assert_eq!(host.under(&name("a.example.com/x/y/z")), None);
        assert_eq!(name("").under(&name("local")), None);
        assert_eq!((name("").segments(), host.segments()), (0, 3));
    }
}
