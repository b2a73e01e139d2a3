//! Artifact paths: relative to the output path, never escaping it; and the resolution of
//! symlinks for BatchStat, with Bazel's `output_path_aliases` for absolute targets.

use clientd_digest::truncate;

/// The longest path accepted: Linux's PATH_MAX, beyond which no file could be opened anyway.
const MAX_PATH_BYTES: usize = 4096;

/// Why an artifact path or a name in a Directory is refused (INVALID_ARGUMENT). Each message
/// quotes it (shortened when long).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path {path:?} is longer than {MAX_PATH_BYTES} bytes")]
    TooLong { path: String },
    #[error("path {0:?} must be relative to the output path")]
    NotRelative(String),
    #[error("path {0:?} has an empty, `.` or `..` component: it must stay inside the output path")]
    Escapes(String),
    #[error("name {0:?} is more than one path component")]
    NotOneComponent(String),
}

/// Checks that `path` is relative, with no empty, `.` or `..` components, and no longer than
/// PATH_MAX (so that error messages naming it stay short enough for a gRPC status).
pub fn check(path: &str) -> Result<(), PathError> {
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong {
            path: truncate(path),
        });
    }
    if path.is_empty() || path.starts_with('/') {
        return Err(PathError::NotRelative(path.into()));
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(PathError::Escapes(path.into()));
    }
    Ok(())
}

/// Checks that `name`, a name in a Directory message, is one path component: REAPI requires
/// every child of a directory to be exactly one segment (so equal trees hash equally).
pub fn check_component(name: &str) -> Result<(), PathError> {
    check(name)?;
    match name.contains('/') {
        true => Err(PathError::NotOneComponent(name.into())),
        false => Ok(()),
    }
}

/// `base/relative`, normalized; None if it leaves the output path.
pub fn join(base: &str, relative: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for component in base.split('/').chain(relative.split('/')) {
        match component {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// An absolute symlink target as a path in the output path, through an alias
/// (`{"/abs/execroot/bazel-out": "."}`); None if no alias covers it.
pub fn unalias(target: &str, aliases: &[(String, String)]) -> Option<String> {
    aliases.iter().find_map(|(from, to)| {
        let rest = target.strip_prefix(from.trim_end_matches('/'))?;
        if !rest.is_empty() && !rest.starts_with('/') {
            return None;
        }
        join(to, rest)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_output_path() {
        assert!(check("k8-fastbuild/bin/a.txt").is_ok());
        for bad in ["", "/abs"] {
            assert_eq!(check(bad), Err(PathError::NotRelative(bad.into())));
        }
        for bad in ["a//b", "a/./b", "../x", "a/..", "a/"] {
            assert_eq!(check(bad), Err(PathError::Escapes(bad.into())));
        }
        let long = "a/".repeat(MAX_PATH_BYTES);
        assert!(matches!(check(&long), Err(PathError::TooLong { .. })));
        assert!(check_component("a.txt").is_ok());
        assert_eq!(
            check_component("a/b"),
            Err(PathError::NotOneComponent("a/b".into()))
        );
        for bad in ["..", ""] {
            assert!(check_component(bad).is_err(), "{bad}");
        }
        assert_eq!(join("a/b", "../c").as_deref(), Some("a/c"));
        assert_eq!(join("", "../c"), None);
        assert_eq!(join(".", "/a/b").as_deref(), Some("a/b"));
        let aliases = vec![("/root/execroot/ws/bazel-out".to_string(), ".".to_string())];
        assert_eq!(
            unalias("/root/execroot/ws/bazel-out/k8/bin/x", &aliases).as_deref(),
            Some("k8/bin/x")
        );
        assert_eq!(unalias("/root/execroot/ws/bazel-outx", &aliases), None);
        assert_eq!(unalias("/elsewhere", &aliases), None);
    }
}
