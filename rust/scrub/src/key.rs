//! The scrubbed key of an action: the digest of the Action with a rule's [`Transform`] applied,
//! computed from the Action, Command and input tree in the CAS (Bazel uploads them all before
//! Execute).
//!
//! The scrubbed Action is the original with
//! - `input_root_digest`: the input tree without the omitted inputs (files, symlinks and
//!   directories whose path matches; directories emptied by that are left out too, as Bazel
//!   builds its tree from the remaining inputs);
//! - `command_digest`: the Command with the argument replacements applied;
//! - `salt`: the original salt, then [`SALT_MARKER`], then the rule's salt. The marker keeps
//!   scrubbed keys apart from every real action's key, so an entry stored under one is never
//!   served to a client that asked for an unscrubbed action.
//!
//! Unchanged directories keep their digests (they are not re-encoded), so a key depends only on
//! what the transform changes.

use crate::config::Transform;
use bytes::Bytes;
use clientd_digest::{Digest, DigestFunction, InstanceName};
use clientd_proto::build::bazel::remote::execution::v2 as re;
use clientd_store::{read_tree, BlobStore, StoreError, TreeError};
use prost::Message;
use std::collections::HashMap;
use thiserror::Error;

/// Between the original salt and the rule's: what makes a scrubbed key a scrubbed key.
pub const SALT_MARKER: &[u8] = b"\0clientd scrubbed key v1\0";

#[derive(Debug, Error)]
pub enum ScrubError {
    #[error("cannot read the {what} {digest}: {error}")]
    Read {
        what: &'static str,
        digest: Box<Digest>,
        error: StoreError,
    },
    #[error("the {what} {digest} is not a valid message: {error}")]
    Decode {
        what: &'static str,
        digest: Box<Digest>,
        error: prost::DecodeError,
    },
    #[error("the {what} has a malformed digest: {0}", what = .1)]
    BadDigest(clientd_digest::DigestError, &'static str),
    /// The input tree (a Directory missing, malformed, or too many of them).
    #[error("the input tree: {0}")]
    Tree(#[from] TreeError),
}

/// The scrubbed key, and the messages it is the digest of.
#[derive(Debug, Clone)]
pub struct ScrubbedAction {
    pub digest: Digest,
    /// The scrubbed Action and Command, and every Directory the transform changed: stored with
    /// a result, so that the entry can be inspected like any other.
    pub blobs: Vec<(Digest, Bytes)>,
}

/// The scrubbed key of `action` in `instance_name`'s CAS; None for an action marked
/// `do_not_cache`, which must never be answered from a cache.
pub async fn scrub_action(
    store: &dyn BlobStore,
    instance_name: &InstanceName,
    action_digest: &Digest,
    transform: &Transform,
) -> Result<Option<ScrubbedAction>, ScrubError> {
    let function = action_digest.function();
    let mut action: re::Action = read(store, instance_name, action_digest, "Action").await?;
    if action.do_not_cache {
        return Ok(None);
    }
    let mut blobs = Vec::new();
    let command_digest = proto_digest(function, action.command_digest.as_ref(), "command")?;
    let mut command: re::Command = read(store, instance_name, &command_digest, "Command").await?;
    for argument in &mut command.arguments {
        *argument = transform.argument(argument);
    }
    action.command_digest = Some(push(&mut blobs, function, &command).to_proto());
    if !transform.omitted_inputs.is_empty() {
        let root = proto_digest(function, action.input_root_digest.as_ref(), "input root")?;
        let tree = read_tree(store, instance_name, &root).await?;
        let root = scrub_directory(&tree, &root, "", transform, &mut blobs)?.unwrap_or(root);
        action.input_root_digest = Some(root.to_proto());
    }
    let mut salt = action.salt.to_vec();
    salt.extend_from_slice(SALT_MARKER);
    salt.extend_from_slice(transform.salt.as_bytes());
    action.salt = salt.into();
    let digest = push(&mut blobs, function, &action);
    // The Action last in the list is the key; keep it first for readers.
    blobs.rotate_right(1);
    Ok(Some(ScrubbedAction { digest, blobs }))
}

fn proto_digest(
    function: DigestFunction,
    digest: Option<&re::Digest>,
    what: &'static str,
) -> Result<Digest, ScrubError> {
    let digest = digest.cloned().unwrap_or_default();
    Digest::from_proto(Some(function), &digest).map_err(|e| ScrubError::BadDigest(e, what))
}

/// Encodes `message`, keeps it for the CAS, and returns its digest.
fn push(
    blobs: &mut Vec<(Digest, Bytes)>,
    function: DigestFunction,
    message: &impl Message,
) -> Digest {
    let bytes = Bytes::from(message.encode_to_vec());
    let digest = function.digest_of(&bytes);
    blobs.push((digest, bytes));
    digest
}

async fn read<M: Message + Default>(
    store: &dyn BlobStore,
    instance_name: &InstanceName,
    digest: &Digest,
    what: &'static str,
) -> Result<M, ScrubError> {
    let bytes = store
        .read_bytes(instance_name, digest)
        .await
        .map_err(|error| ScrubError::Read {
            what,
            digest: Box::new(*digest),
            error,
        })?;
    decode(&bytes, digest, what)
}

fn decode<M: Message + Default>(
    bytes: &[u8],
    digest: &Digest,
    what: &'static str,
) -> Result<M, ScrubError> {
    M::decode(bytes).map_err(|error| ScrubError::Decode {
        what,
        digest: Box::new(*digest),
        error,
    })
}

fn join(parent: &str, name: &str) -> String {
    match parent {
        "" => name.to_string(),
        _ => format!("{parent}/{name}"),
    }
}

/// The digest of the directory at `path` without its omitted inputs: None when omitting emptied
/// it, the same digest when nothing under it is omitted.
fn scrub_directory(
    tree: &HashMap<Digest, re::Directory>,
    digest: &Digest,
    path: &str,
    transform: &Transform,
    blobs: &mut Vec<(Digest, Bytes)>,
) -> Result<Option<Digest>, ScrubError> {
    let original = &tree[digest];
    let mut directory = original.clone();
    directory
        .files
        .retain(|f| !transform.omits(&join(path, &f.name)));
    directory
        .symlinks
        .retain(|s| !transform.omits(&join(path, &s.name)));
    let mut subdirectories = Vec::with_capacity(directory.directories.len());
    for mut node in std::mem::take(&mut directory.directories) {
        let child_path = join(path, &node.name);
        if transform.omits(&child_path) {
            continue;
        }
        let child = proto_digest(digest.function(), node.digest.as_ref(), "directory")?;
        if let Some(scrubbed) = scrub_directory(tree, &child, &child_path, transform, blobs)? {
            node.digest = Some(scrubbed.to_proto());
            subdirectories.push(node);
        }
    }
    directory.directories = subdirectories;
    if directory == *original {
        return Ok(Some(*digest));
    }
    let emptied = directory.files.is_empty()
        && directory.directories.is_empty()
        && directory.symlinks.is_empty();
    if emptied && !path.is_empty() {
        return Ok(None);
    }
    Ok(Some(push(blobs, digest.function(), &directory)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ScrubbingConfig;
    use clientd_store::{DiskLruOptions, LocalCas, SystemClock};
    use std::sync::Arc;

    const STAMP: &str = r#"rules { transform {
        omitted_inputs: "bazel-out/volatile-status\\.txt"
        omitted_inputs: "(.*/)?stamp\\.txt"
        omitted_inputs: "out/gone"
        arg_replacements { source: "--build=\\d+" target: "--build=N" }
    } }"#;

    /// A CAS in a temp dir, with helpers to put messages into it.
    struct Cas {
        _dir: tempfile::TempDir,
        store: LocalCas,
    }

    impl Cas {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let options = DiskLruOptions {
                max_bytes: 1 << 30,
                sync_writes: false,
            };
            let store = LocalCas::open(dir.path(), options, Arc::new(SystemClock)).unwrap();
            Cas { _dir: dir, store }
        }

        async fn put(&self, message: &impl Message) -> re::Digest {
            let bytes = Bytes::from(message.encode_to_vec());
            let digest = DigestFunction::Sha256.digest_of(&bytes);
            self.store
                .write_bytes(&InstanceName::default(), &digest, bytes)
                .await
                .unwrap();
            digest.to_proto()
        }

        fn file(name: &str, content: &str) -> re::FileNode {
            re::FileNode {
                name: name.into(),
                digest: Some(
                    DigestFunction::Sha256
                        .digest_of(content.as_bytes())
                        .to_proto(),
                ),
                ..Default::default()
            }
        }

        async fn dir(&self, files: Vec<re::FileNode>, dirs: Vec<(&str, re::Digest)>) -> re::Digest {
            let directories = dirs
                .into_iter()
                .map(|(name, digest)| re::DirectoryNode {
                    name: name.into(),
                    digest: Some(digest),
                })
                .collect();
            self.put(&re::Directory {
                files,
                directories,
                ..Default::default()
            })
            .await
        }

        /// An action whose input root has `src/a.c` (content `a`), `bazel-out/volatile-status.txt`
        /// (`volatile`), `deep/x/y/stamp.txt` (`stamp`) and `out/gone/f`, run with `args`.
        async fn action(&self, a: &str, volatile: &str, stamp: &str, args: &[&str]) -> Digest {
            let src = self.dir(vec![Self::file("a.c", a)], vec![]).await;
            let bazel_out = self
                .dir(
                    vec![
                        Self::file("stable-status.txt", "stable"),
                        Self::file("volatile-status.txt", volatile),
                    ],
                    vec![],
                )
                .await;
            let y = self.dir(vec![Self::file("stamp.txt", stamp)], vec![]).await;
            let x = self.dir(vec![], vec![("y", y)]).await;
            let deep = self.dir(vec![], vec![("x", x)]).await;
            let gone = self.dir(vec![Self::file("f", "f")], vec![]).await;
            let out = self.dir(vec![], vec![("gone", gone)]).await;
            let root = self
                .dir(
                    vec![],
                    vec![
                        ("bazel-out", bazel_out),
                        ("deep", deep),
                        ("out", out),
                        ("src", src),
                    ],
                )
                .await;
            let command = self
                .put(&re::Command {
                    arguments: args.iter().map(|a| a.to_string()).collect(),
                    ..Default::default()
                })
                .await;
            let action = self
                .put(&re::Action {
                    command_digest: Some(command),
                    input_root_digest: Some(root),
                    ..Default::default()
                })
                .await;
            Digest::from_proto(Some(DigestFunction::Sha256), &action).unwrap()
        }
    }

    /// `action` with its Command replaced and its timeout set.
    async fn variant(cas: &Cas, action: &Digest, command: re::Command, timeout: i64) -> Digest {
        let bytes = cas
            .store
            .read_bytes(&InstanceName::default(), action)
            .await
            .unwrap();
        let mut action = re::Action::decode(bytes).unwrap();
        action.command_digest = Some(cas.put(&command).await);
        action.timeout = Some(clientd_proto::prost_types::Duration {
            seconds: timeout,
            nanos: 0,
        });
        Digest::from_proto(None, &cas.put(&action).await).unwrap()
    }

    async fn key(cas: &Cas, config: &str, action: &Digest) -> Digest {
        let config = ScrubbingConfig::parse(config).unwrap();
        let transform = &config.rule_for("", "").unwrap().transform;
        scrub_action(&cas.store, &InstanceName::default(), action, transform)
            .await
            .unwrap()
            .unwrap()
            .digest
    }

    #[tokio::test]
    async fn omitted_inputs_at_any_depth_and_replaced_arguments_do_not_change_the_key() {
        let cas = Cas::new();
        let base = cas.action("a", "v1", "s1", &["gen", "--build=1"]).await;
        let restamped = cas.action("a", "v2", "s2", &["gen", "--build=2"]).await;
        assert_ne!(base, restamped);
        let k = key(&cas, STAMP, &base).await;
        assert_eq!(k, key(&cas, STAMP, &restamped).await);
        // Any other difference changes it: an input, an argument, the salt.
        let edited = cas.action("b", "v1", "s1", &["gen", "--build=1"]).await;
        assert_ne!(k, key(&cas, STAMP, &edited).await);
        let other_arg = cas.action("a", "v1", "s1", &["gen2", "--build=1"]).await;
        assert_ne!(k, key(&cas, STAMP, &other_arg).await);
        let salted = STAMP.replace("} }", "salt: \"2\" } }");
        assert_ne!(k, key(&cas, &salted, &base).await);
        // The environment and the rest of the Action are part of the key too.
        let args = |a: &[&str]| a.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        let command = re::Command {
            arguments: args(&["gen", "--build=1"]),
            ..Default::default()
        };
        let plain = variant(&cas, &base, command.clone(), 60).await;
        let env = re::Command {
            environment_variables: vec![re::command::EnvironmentVariable {
                name: "CC".into(),
                value: "clang".into(),
            }],
            ..command.clone()
        };
        let with_env = variant(&cas, &base, env, 60).await;
        let longer = variant(&cas, &base, command, 120).await;
        let plain_key = key(&cas, STAMP, &plain).await;
        assert_ne!(plain_key, key(&cas, STAMP, &with_env).await);
        assert_ne!(plain_key, key(&cas, STAMP, &longer).await);
        // Never a real action's key, not even when the transform changes nothing.
        assert_ne!(key(&cas, "rules {}", &base).await, base);
    }

    #[tokio::test]
    async fn the_scrubbed_tree_leaves_out_exactly_the_omitted_inputs() {
        let cas = Cas::new();
        let base = cas.action("a", "v1", "s1", &["gen"]).await;
        let config = ScrubbingConfig::parse(STAMP).unwrap();
        let transform = &config.rule_for("", "").unwrap().transform;
        let scrubbed = scrub_action(&cas.store, &InstanceName::default(), &base, transform)
            .await
            .unwrap()
            .unwrap();
        let (digest, action) = &scrubbed.blobs[0];
        assert_eq!(*digest, scrubbed.digest);
        let action = re::Action::decode(action.clone()).unwrap();
        assert!(action.salt.starts_with(SALT_MARKER));
        let root = action.input_root_digest.unwrap();
        let find = |d: &re::Digest| {
            let d = Digest::from_proto(Some(DigestFunction::Sha256), d).unwrap();
            let bytes = &scrubbed
                .blobs
                .iter()
                .find(|(x, _)| *x == d)
                .expect("changed")
                .1;
            re::Directory::decode(bytes.clone()).unwrap()
        };
        let root = find(&root);
        let names: Vec<_> = root.directories.iter().map(|d| d.name.as_str()).collect();
        // deep/x/y held only stamp.txt and out/ only the omitted out/gone: both emptied, so gone.
        assert_eq!(names, ["bazel-out", "src"]);
        let bazel_out = find(root.directories[0].digest.as_ref().unwrap());
        let files: Vec<_> = bazel_out.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(files, ["stable-status.txt"]);
        // src/ is unchanged: its digest is the original's, and it is not among the new blobs.
        let src = Digest::from_proto(
            Some(DigestFunction::Sha256),
            root.directories[1].digest.as_ref().unwrap(),
        )
        .unwrap();
        assert!(scrubbed.blobs.iter().all(|(d, _)| *d != src));
    }

    #[tokio::test]
    async fn do_not_cache_missing_blobs_and_bad_messages() {
        let cas = Cas::new();
        let config = ScrubbingConfig::parse(STAMP).unwrap();
        let transform = &config.rule_for("", "").unwrap().transform;
        let uncached = cas
            .put(&re::Action {
                do_not_cache: true,
                ..Default::default()
            })
            .await;
        let uncached = Digest::from_proto(None, &uncached).unwrap();
        assert!(
            scrub_action(&cas.store, &InstanceName::default(), &uncached, transform)
                .await
                .unwrap()
                .is_none()
        );
        let absent = DigestFunction::Sha256.digest_of(b"no such action");
        let err = scrub_action(&cas.store, &InstanceName::default(), &absent, transform)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot read the Action {absent}")),
            "{err}"
        );
        let garbage = Bytes::from_static(b"\xff\xff\xff");
        let bad = DigestFunction::Sha256.digest_of(&garbage);
        cas.store
            .write_bytes(&InstanceName::default(), &bad, garbage)
            .await
            .unwrap();
        let err = scrub_action(&cas.store, &InstanceName::default(), &bad, transform)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("is not a valid message"), "{err}");
        // An input tree that is not in the CAS.
        let command = cas.put(&re::Command::default()).await;
        let missing_root = cas
            .put(&re::Action {
                command_digest: Some(command),
                input_root_digest: Some(absent.to_proto()),
                ..Default::default()
            })
            .await;
        let missing_root = Digest::from_proto(None, &missing_root).unwrap();
        let err = scrub_action(
            &cas.store,
            &InstanceName::default(),
            &missing_root,
            transform,
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("the input tree: cannot read the Directory"),
            "{err}"
        );
    }
}
