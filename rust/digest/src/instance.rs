use crate::error::truncate;
use crate::error::DigestError;

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

/// Whether an instance name is the local cache's (`local` or under `local/`), as opposed to a
/// cluster's: the one namespace clientd reserves for itself.
pub fn is_local_instance(name: &str) -> bool {
    name.strip_prefix(LOCAL_INSTANCE)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Checks an instance name: empty, or `/`-separated non-empty segments none of which is reserved.
pub fn validate_instance_name(name: &str) -> Result<(), DigestError> {
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
            validate_instance_name(good).unwrap();
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
            assert!(validate_instance_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_local_namespace_is_local_and_its_subnames_only() {
        for local in ["local", "local/a", "local/a/b"] {
            assert!(is_local_instance(local), "{local}");
        }
        for other in [
            "",
            "localhost",
            "locals/a",
            "a/local",
            "cluster.example.com",
        ] {
            assert!(!is_local_instance(other), "{other}");
        }
    }
}
