//! A Tree message, expanded to the entries it stages below an output path: the pure part of
//! staging a tree artifact (the service reads the message; this checks and walks it).

use crate::paths;
use crate::service::status;
use clientd_digest::{Digest, DigestFunction, InstanceName};
use clientd_proto::build::bazel::remote::execution::v2 as re;
use clientd_proto::google::rpc::Status as RpcStatus;
use clientd_vfs::OutputEntry;
use prost::Message;
use std::collections::HashMap;
use tonic::Code;

/// The entries `tree_message` (blob `tree`, digests computed with `function`) stages at `path`:
/// the directory itself, then every file (as CAS files of `instance`), symlink and directory
/// below. `expected_root`, if given, must be the digest of the tree's root. A name that is not
/// one path component, a digest that does not parse, or a directory missing from the children
/// is InvalidArgument, with the path.
pub(crate) fn expand(
    path: &str,
    tree: &Digest,
    tree_message: re::Tree,
    function: DigestFunction,
    instance: &InstanceName,
    expected_root: Option<&Digest>,
) -> Result<Vec<(String, OutputEntry)>, RpcStatus> {
    let root = tree_message.root.ok_or_else(|| {
        status(
            Code::InvalidArgument,
            format!("{path}: tree {tree} has no root"),
        )
    })?;
    let root_digest = function.digest_of(&root.encode_to_vec());
    if let Some(expected) = expected_root {
        if *expected != root_digest {
            return Err(status(
                Code::InvalidArgument,
                format!(
                    "{path}: root_directory_digest {expected} is not the tree's root {root_digest}"
                ),
            ));
        }
    }
    let children: HashMap<Digest, re::Directory> = tree_message
        .children
        .into_iter()
        .map(|d| (function.digest_of(&d.encode_to_vec()), d))
        .collect();
    let mut out = vec![(path.to_string(), OutputEntry::Directory)];
    let mut stack = vec![(path.to_string(), &root)];
    let bad = |what: String| {
        status(
            Code::InvalidArgument,
            format!("{path}: tree {tree}: {what}"),
        )
    };
    // A node's digest, parsed with the tree's function.
    let digest_of = |digest: Option<&re::Digest>, what: &str, name: &str| {
        digest
            .and_then(|d| Digest::from_proto(Some(function), d).ok())
            .ok_or_else(|| bad(format!("{what} {name:?} has no valid digest")))
    };
    while let Some((dir_path, dir)) = stack.pop() {
        for file in &dir.files {
            paths::check_component(&file.name).map_err(|e| bad(e.to_string()))?;
            let digest = digest_of(file.digest.as_ref(), "file", &file.name)?;
            out.push((
                format!("{dir_path}/{}", file.name),
                OutputEntry::CasFile {
                    instance: instance.clone(),
                    digest,
                    executable: file.is_executable,
                },
            ));
        }
        for link in &dir.symlinks {
            paths::check_component(&link.name).map_err(|e| bad(e.to_string()))?;
            out.push((
                format!("{dir_path}/{}", link.name),
                OutputEntry::Symlink(link.target.clone()),
            ));
        }
        for sub in &dir.directories {
            paths::check_component(&sub.name).map_err(|e| bad(e.to_string()))?;
            let digest = digest_of(sub.digest.as_ref(), "directory", &sub.name)?;
            let child = children.get(&digest).ok_or_else(|| {
                bad(format!(
                    "directory {:?} ({digest}) is not among its children",
                    sub.name
                ))
            })?;
            let sub_path = format!("{dir_path}/{}", sub.name);
            out.push((sub_path.clone(), OutputEntry::Directory));
            stack.push((sub_path, child));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: DigestFunction = DigestFunction::Sha256;

    fn node(name: &str, digest: &Digest) -> re::DirectoryNode {
        re::DirectoryNode {
            name: name.into(),
            digest: Some(digest.to_proto()),
        }
    }

    /// `root/` holds a file, a symlink and `sub/`, which holds an executable.
    fn tree() -> (re::Tree, Digest) {
        let blob = F.digest_of(b"data");
        let sub = re::Directory {
            files: vec![re::FileNode {
                name: "tool".into(),
                digest: Some(blob.to_proto()),
                is_executable: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let sub_digest = F.digest_of(&sub.encode_to_vec());
        let root = re::Directory {
            files: vec![re::FileNode {
                name: "a.txt".into(),
                digest: Some(blob.to_proto()),
                ..Default::default()
            }],
            symlinks: vec![re::SymlinkNode {
                name: "link".into(),
                target: "a.txt".into(),
                ..Default::default()
            }],
            directories: vec![node("sub", &sub_digest)],
            ..Default::default()
        };
        let root_digest = F.digest_of(&root.encode_to_vec());
        let tree = re::Tree {
            root: Some(root),
            children: vec![sub],
        };
        (tree, root_digest)
    }

    fn expanded(
        tree: re::Tree,
        root: Option<&Digest>,
    ) -> Result<Vec<(String, OutputEntry)>, RpcStatus> {
        let digest = F.digest_of(&tree.encode_to_vec());
        expand("out/t", &digest, tree, F, &InstanceName::local(), root)
    }

    fn invalid(result: Result<Vec<(String, OutputEntry)>, RpcStatus>, says: &str) {
        let status = result.expect_err("refused");
        assert_eq!(
            status.code,
            Code::InvalidArgument as i32,
            "{}",
            status.message
        );
        assert!(status.message.contains(says), "{}", status.message);
        assert!(status.message.starts_with("out/t: "), "{}", status.message);
    }

    #[test]
    fn a_tree_expands_to_every_entry_below_its_path() {
        let (tree, root) = tree();
        let entries = expanded(tree, Some(&root)).unwrap();
        let blob = F.digest_of(b"data");
        let file = |executable| OutputEntry::CasFile {
            instance: InstanceName::local(),
            digest: blob,
            executable,
        };
        let mut got: Vec<_> = entries.into_iter().collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            vec![
                ("out/t".to_string(), OutputEntry::Directory),
                ("out/t/a.txt".to_string(), file(false)),
                (
                    "out/t/link".to_string(),
                    OutputEntry::Symlink("a.txt".into())
                ),
                ("out/t/sub".to_string(), OutputEntry::Directory),
                ("out/t/sub/tool".to_string(), file(true)),
            ]
        );
    }

    #[test]
    fn a_root_other_than_the_one_named_is_refused() {
        let (tree, _) = tree();
        let other = F.digest_of(b"another root");
        invalid(expanded(tree, Some(&other)), "root_directory_digest");
    }

    #[test]
    fn a_directory_missing_from_the_children_is_refused() {
        let (mut tree, _) = tree();
        tree.children.clear();
        invalid(expanded(tree, None), "not among its children");
    }

    #[test]
    fn names_must_be_single_path_components() {
        for bad in ["..", "a/b", ""] {
            let (mut tree, _) = tree();
            tree.root.as_mut().unwrap().symlinks[0].name = bad.into();
            invalid(expanded(tree, None), &format!("{bad:?}"));
        }
    }

    #[test]
    fn a_tree_without_a_root_or_with_a_bad_digest_is_refused() {
        let (mut rootless, _) = tree();
        rootless.root = None;
        invalid(expanded(rootless, None), "has no root");
        let (mut undigested, _) = tree();
        undigested.root.as_mut().unwrap().files[0].digest = None;
        invalid(expanded(undigested, None), "has no valid digest");
    }
}
