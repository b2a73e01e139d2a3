//! `cas/`: every blob of every instance name, resolved lazily by path.
//!
//! `cas/<instance name...>/blobs/<digest function>/<kind>/<hash>-<size>`. Instance names may
//! contain slashes, so components are instance name until the reserved `blobs`. `cas/` and the
//! instance-name levels list nothing (they are unbounded: the view is lookup only there, and a
//! name is checked when it is looked up); `blobs/` lists the digest functions the instance offers,
//! each function its kinds. Blob content comes from the local CAS, or from the cluster the instance
//! name routes to, fetched once into the local CAS (the stores' read caching does that).

use crate::attr::{Errno, VfsResult};
use crate::command;
use clientd_digest::{Digest, DigestFunction, InstanceName};
use clientd_proto::build::bazel::remote::execution::v2 as re;
use clientd_store::{BlobStore, LocalBlob, LocalCas, StoreError};
use futures::future::BoxFuture;
use lru::LruCache;
use prost::Message;
use std::collections::HashMap;
use std::fs::File;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The kinds of view a blob has, the directory names under `blobs/<function>/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    File,
    Executable,
    Directory,
    Tree,
    Command,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Command,
        Kind::Directory,
        Kind::Executable,
        Kind::File,
        Kind::Tree,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Executable => "executable",
            Kind::Directory => "directory",
            Kind::Tree => "tree",
            Kind::Command => "command",
        }
    }
}

/// A node of the cas/ view. Equal nodes are the same inode.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CasNode {
    /// `cas/` itself (empty) or an instance-name prefix being spelled out.
    Instance(InstanceName),
    Blobs(InstanceName),
    Function(InstanceName, DigestFunction),
    KindDir(InstanceName, DigestFunction, Kind),
    File {
        instance: InstanceName,
        digest: Digest,
        executable: bool,
    },
    /// A REv2 Directory (from `directory/`, or a subdirectory of one).
    Directory {
        instance: InstanceName,
        digest: Digest,
    },
    /// A directory inside a REv2 Tree (`tree/<digest>` is its root).
    TreeDir {
        instance: InstanceName,
        tree: Digest,
        dir: Digest,
    },
    Symlink(Arc<str>),
    /// The script of a REv2 Command.
    Command {
        digest: Digest,
        script: Arc<[u8]>,
    },
}

impl CasNode {
    pub fn is_dir(&self) -> bool {
        !matches!(
            self,
            CasNode::File { .. } | CasNode::Symlink(_) | CasNode::Command { .. }
        )
    }
}

/// An open cas/ file.
#[derive(Clone)]
pub enum CasHandle {
    /// A blob in the local CAS: reads go to the file, and the kernel caches its pages.
    Local(Arc<File>),
    /// Generated or empty content, or a small blob packed in the local CAS.
    Bytes(Arc<[u8]>),
}

/// A parsed Tree: its root and every directory by digest.
struct ParsedTree {
    root: Digest,
    dirs: HashMap<Digest, Arc<re::Directory>>,
}

impl ParsedTree {
    /// The Tree message `data` (blob `digest`), its Directories by digest.
    fn parse(digest: &Digest, data: bytes::Bytes) -> VfsResult<ParsedTree> {
        let message = re::Tree::decode(data).map_err(|e| {
            tracing::warn!("cas/: {digest} is not a valid message: {e}");
            Errno::INVAL
        })?;
        let function = digest.function();
        let digest_of = |dir: &re::Directory| function.digest_of(&dir.encode_to_vec());
        let root_message = message.root.ok_or(Errno::INVAL)?;
        let root = digest_of(&root_message);
        let mut dirs: HashMap<Digest, Arc<re::Directory>> = message
            .children
            .into_iter()
            .map(|child| (digest_of(&child), Arc::new(child)))
            .collect();
        dirs.insert(root, Arc::new(root_message));
        Ok(ParsedTree { root, dirs })
    }
}

/// Parsed messages kept in memory, so listing a directory does not re-read and re-decode it.
const MESSAGE_CACHE: usize = 10_000;
/// Trees are larger; fewer are kept.
const TREE_CACHE: usize = 64;

/// Parsed messages by instance name and digest.
type MessageCache<T> = LruCache<(InstanceName, Digest), Arc<T>>;

/// What the gRPC front serves: cas/ resolves no other instance names, so a path there names what
/// a gRPC call with that name would read, and `blobs/` lists what Capabilities would offer.
pub trait Routing: Send + Sync {
    /// Whether the front serves an instance name (it routes to the local cache or a cluster).
    fn serves(&self, instance_name: &InstanceName) -> bool;
    /// The digest functions offered for an instance name the front serves (for a cluster, those
    /// its Capabilities offer that clientd supports); None when that cannot be known now (the
    /// cluster does not answer).
    fn digest_functions<'a>(&'a self, instance_name: &'a InstanceName) -> DigestFunctions<'a>;
}

/// What [`Routing::digest_functions`] returns.
pub type DigestFunctions<'a> = BoxFuture<'a, Option<Vec<DigestFunction>>>;

/// The routing of a file system over the local cache alone, with no clusters: `local` and
/// `local/...`, with every digest function clientd supports. For code that builds a
/// [`Vfs`](crate::Vfs) without the daemon's front (the tests of this crate and of the Output
/// Service's).
pub struct LocalRouting;

impl Routing for LocalRouting {
    fn serves(&self, instance_name: &InstanceName) -> bool {
        instance_name.is_local()
    }

    fn digest_functions<'a>(&'a self, _instance_name: &'a InstanceName) -> DigestFunctions<'a> {
        Box::pin(async { Some(DigestFunction::ALL.to_vec()) })
    }
}

pub struct CasView {
    stores: Arc<dyn BlobStore>,
    routing: Box<dyn Routing>,
    local: Arc<LocalCas>,
    timeout: Duration,
    directories: Mutex<MessageCache<re::Directory>>,
    trees: Mutex<MessageCache<ParsedTree>>,
}

/// A store failure as an errno: missing blobs are ENOENT, bad names EINVAL, the rest (a cluster
/// that is down, a corrupt blob) EIO.
fn errno(err: &StoreError) -> Errno {
    match err {
        StoreError::NotFound(_) => Errno::NOENT,
        StoreError::InvalidArgument(_) => Errno::INVAL,
        _ => Errno::IO,
    }
}

impl CasView {
    /// `stores` routes instance names (the daemon's composition); `local` is the local CAS that
    /// read caching fills, whose files are handed to readers.
    pub fn new(
        stores: Arc<dyn BlobStore>,
        routing: Box<dyn Routing>,
        local: Arc<LocalCas>,
        timeout: Duration,
    ) -> Self {
        CasView {
            stores,
            routing,
            local,
            timeout,
            directories: Mutex::new(LruCache::new(NonZeroUsize::new(MESSAGE_CACHE).unwrap())),
            trees: Mutex::new(LruCache::new(NonZeroUsize::new(TREE_CACHE).unwrap())),
        }
    }

    /// Runs a store call with the configured deadline; failures are logged once here.
    async fn bounded<T>(
        &self,
        what: &str,
        digest: &Digest,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> VfsResult<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => {
                if !matches!(err, StoreError::NotFound(_)) {
                    tracing::warn!("cas/: {what} {digest}: {err}");
                }
                Err(errno(&err))
            }
            Err(_) => {
                tracing::warn!("cas/: {what} {digest}: no answer within {:?}", self.timeout);
                Err(Errno::IO)
            }
        }
    }

    async fn message<M: Message + Default>(
        &self,
        instance: &InstanceName,
        digest: &Digest,
    ) -> VfsResult<M> {
        let data = self
            .bounded("reading", digest, self.stores.read_bytes(instance, digest))
            .await?;
        M::decode(data).map_err(|e| {
            tracing::warn!("cas/: {digest} is not a valid message: {e}");
            Errno::INVAL
        })
    }

    async fn directory(
        &self,
        instance: &InstanceName,
        digest: &Digest,
    ) -> VfsResult<Arc<re::Directory>> {
        let key = (instance.clone(), *digest);
        if let Some(dir) = self.directories.lock().unwrap().get(&key) {
            return Ok(dir.clone());
        }
        let dir = Arc::new(self.message::<re::Directory>(instance, digest).await?);
        self.directories.lock().unwrap().put(key, dir.clone());
        Ok(dir)
    }

    async fn tree(&self, instance: &InstanceName, digest: &Digest) -> VfsResult<Arc<ParsedTree>> {
        let key = (instance.clone(), *digest);
        if let Some(tree) = self.trees.lock().unwrap().get(&key) {
            return Ok(tree.clone());
        }
        let data = self
            .bounded("reading", digest, self.stores.read_bytes(instance, digest))
            .await?;
        // Decoding and hashing every Directory of a tree is work for a blocking thread.
        let digest = *digest;
        let tree = tokio::task::spawn_blocking(move || ParsedTree::parse(&digest, data))
            .await
            .map_err(|_| Errno::IO)??;
        let tree = Arc::new(tree);
        self.trees.lock().unwrap().put(key, tree.clone());
        Ok(tree)
    }

    /// Whether a blob exists: the local CAS first, then the instance's store.
    async fn exists(&self, instance: &InstanceName, digest: &Digest) -> VfsResult<bool> {
        if digest.is_empty_blob() || self.local.known_present(instance, digest).await {
            return Ok(true);
        }
        let missing = self
            .bounded(
                "looking up",
                digest,
                self.stores
                    .find_missing(instance, std::slice::from_ref(digest)),
            )
            .await?;
        Ok(missing.is_empty())
    }

    /// The Directory message of a Directory or TreeDir node if it is already parsed.
    fn cached_dir(&self, node: &CasNode) -> Option<VfsResult<Arc<re::Directory>>> {
        match node {
            CasNode::Directory { instance, digest } => {
                let key = (instance.clone(), *digest);
                Some(Ok(self.directories.lock().unwrap().get(&key)?.clone()))
            }
            CasNode::TreeDir {
                instance,
                tree,
                dir,
            } => {
                let key = (instance.clone(), *tree);
                let parsed = self.trees.lock().unwrap().get(&key)?.clone();
                Some(parsed.dirs.get(dir).cloned().ok_or(Errno::IO))
            }
            _ => Some(Err(Errno::NOTDIR)),
        }
    }

    /// The Directory message of a Directory or TreeDir node, fetched and parsed if needed.
    async fn dir_of(&self, node: &CasNode) -> VfsResult<Arc<re::Directory>> {
        match node {
            CasNode::Directory { instance, digest } => self.directory(instance, digest).await,
            CasNode::TreeDir {
                instance,
                tree,
                dir,
            } => {
                let parsed = self.tree(instance, tree).await?;
                parsed.dirs.get(dir).cloned().ok_or(Errno::IO)
            }
            _ => Err(Errno::NOTDIR),
        }
    }

    /// The child `name` of `parent` if it can be known without waiting for anything: the path
    /// grammar, blobs in the local CAS, messages already parsed. None means "ask [`child`]".
    ///
    /// [`child`]: CasView::child
    pub fn child_now(&self, parent: &CasNode, name: &str) -> Option<VfsResult<CasNode>> {
        Some(match parent {
            CasNode::Instance(prefix) => {
                if name == "blobs" {
                    return Some(match self.routing.serves(prefix) {
                        true => Ok(CasNode::Blobs(prefix.clone())),
                        false => Err(Errno::NOENT),
                    });
                }
                let instance = if prefix.is_empty() {
                    name.to_string()
                } else {
                    format!("{prefix}/{name}")
                };
                InstanceName::new(&instance)
                    .map(CasNode::Instance)
                    .map_err(|_| Errno::NOENT)
            }
            CasNode::Blobs(instance) => DigestFunction::from_name(name)
                .map(|f| CasNode::Function(instance.clone(), f))
                .ok_or(Errno::NOENT),
            CasNode::Function(instance, function) => Kind::ALL
                .into_iter()
                .find(|k| k.name() == name)
                .map(|k| CasNode::KindDir(instance.clone(), *function, k))
                .ok_or(Errno::NOENT),
            CasNode::KindDir(instance, function, kind) => {
                let Ok(digest) = Digest::parse_joined(Some(*function), name, '-') else {
                    return Some(Err(Errno::NOENT));
                };
                let key = (instance.clone(), digest);
                match kind {
                    Kind::File | Kind::Executable if self.local.has(&digest) => Ok(CasNode::File {
                        instance: instance.clone(),
                        digest,
                        executable: *kind == Kind::Executable,
                    }),
                    Kind::Directory if self.directories.lock().unwrap().contains(&key) => {
                        Ok(CasNode::Directory {
                            instance: instance.clone(),
                            digest,
                        })
                    }
                    Kind::Tree => {
                        let root = self.trees.lock().unwrap().get(&key)?.root;
                        Ok(CasNode::TreeDir {
                            instance: instance.clone(),
                            tree: digest,
                            dir: root,
                        })
                    }
                    _ => return None,
                }
            }
            CasNode::Directory { .. } | CasNode::TreeDir { .. } => self
                .cached_dir(parent)?
                .and_then(|dir| Self::entry(parent, &dir, name)),
            CasNode::File { .. } | CasNode::Symlink(_) | CasNode::Command { .. } => {
                Err(Errno::NOTDIR)
            }
        })
    }

    /// The child `name` of `parent`, checked (and its message fetched) now.
    pub async fn child(&self, parent: &CasNode, name: &str) -> VfsResult<CasNode> {
        if let Some(found) = self.child_now(parent, name) {
            return found;
        }
        match parent {
            CasNode::KindDir(instance, function, kind) => {
                let digest =
                    Digest::parse_joined(Some(*function), name, '-').map_err(|_| Errno::NOENT)?;
                self.blob(instance, digest, *kind).await
            }
            CasNode::Directory { .. } | CasNode::TreeDir { .. } => {
                let dir = self.dir_of(parent).await?;
                Self::entry(parent, &dir, name)
            }
            _ => Err(Errno::IO),
        }
    }

    async fn blob(
        &self,
        instance: &InstanceName,
        digest: Digest,
        kind: Kind,
    ) -> VfsResult<CasNode> {
        match kind {
            Kind::File | Kind::Executable => {
                if !self.exists(instance, &digest).await? {
                    return Err(Errno::NOENT);
                }
                Ok(CasNode::File {
                    instance: instance.clone(),
                    digest,
                    executable: kind == Kind::Executable,
                })
            }
            Kind::Directory => {
                self.directory(instance, &digest).await?;
                Ok(CasNode::Directory {
                    instance: instance.clone(),
                    digest,
                })
            }
            Kind::Tree => {
                let root = self.tree(instance, &digest).await?.root;
                Ok(CasNode::TreeDir {
                    instance: instance.clone(),
                    tree: digest,
                    dir: root,
                })
            }
            Kind::Command => {
                let message = self.message::<re::Command>(instance, &digest).await?;
                Ok(CasNode::Command {
                    digest,
                    script: command::script(&message).into_bytes().into(),
                })
            }
        }
    }

    /// The entry `name` of the Directory message of `parent` (a Directory or TreeDir node).
    fn entry(parent: &CasNode, dir: &re::Directory, name: &str) -> VfsResult<CasNode> {
        if let Some(file) = dir.files.iter().find(|f| f.name == name) {
            return Self::file_entry(parent, file);
        }
        if let Some(sub) = dir.directories.iter().find(|d| d.name == name) {
            return Self::directory_entry(parent, sub);
        }
        if let Some(link) = dir.symlinks.iter().find(|s| s.name == name) {
            return Ok(CasNode::Symlink(link.target.as_str().into()));
        }
        Err(Errno::NOENT)
    }

    /// The instance and digest function of `parent` (a Directory or TreeDir node), for its
    /// entries.
    fn entries_of(parent: &CasNode) -> VfsResult<(&InstanceName, DigestFunction)> {
        match parent {
            CasNode::Directory { instance, digest } => Ok((instance, digest.function())),
            CasNode::TreeDir { instance, tree, .. } => Ok((instance, tree.function())),
            _ => Err(Errno::NOTDIR),
        }
    }

    fn entry_digest(function: DigestFunction, digest: Option<&re::Digest>) -> VfsResult<Digest> {
        digest
            .and_then(|d| Digest::from_proto(Some(function), d).ok())
            .ok_or(Errno::IO)
    }

    fn file_entry(parent: &CasNode, file: &re::FileNode) -> VfsResult<CasNode> {
        let (instance, function) = Self::entries_of(parent)?;
        Ok(CasNode::File {
            instance: instance.clone(),
            digest: Self::entry_digest(function, file.digest.as_ref())?,
            executable: file.is_executable,
        })
    }

    fn directory_entry(parent: &CasNode, sub: &re::DirectoryNode) -> VfsResult<CasNode> {
        let (instance, function) = Self::entries_of(parent)?;
        let digest = Self::entry_digest(function, sub.digest.as_ref())?;
        Ok(match parent {
            CasNode::TreeDir { tree, .. } => CasNode::TreeDir {
                instance: instance.clone(),
                tree: *tree,
                dir: digest,
            },
            _ => CasNode::Directory {
                instance: instance.clone(),
                digest,
            },
        })
    }

    /// The entries of a directory node, by name. Lookup-only levels list nothing.
    pub async fn list(&self, node: &CasNode) -> VfsResult<Vec<(String, CasNode)>> {
        let dir = match node {
            CasNode::Blobs(instance) => {
                let functions =
                    tokio::time::timeout(self.timeout, self.routing.digest_functions(instance))
                        .await;
                let Ok(Some(functions)) = functions else {
                    tracing::warn!("cas/{instance}/blobs: the digest functions it offers are unknown (no answer within {:?})", self.timeout);
                    return Err(Errno::IO);
                };
                return Ok(functions
                    .into_iter()
                    .map(|f| (f.name().to_string(), CasNode::Function(instance.clone(), f)))
                    .collect());
            }
            CasNode::Function(instance, function) => {
                return Ok(Kind::ALL
                    .into_iter()
                    .map(|k| {
                        (
                            k.name().to_string(),
                            CasNode::KindDir(instance.clone(), *function, k),
                        )
                    })
                    .collect())
            }
            CasNode::Directory { .. } | CasNode::TreeDir { .. } => self.dir_of(node).await?,
            CasNode::Instance(_) | CasNode::KindDir(..) => return Ok(vec![]),
            _ => return Err(Errno::NOTDIR),
        };
        // Each entry made from its own node: finding every name again by name made a listing
        // quadratic in the directory's size.
        let files = dir
            .files
            .iter()
            .map(|f| Ok((f.name.clone(), Self::file_entry(node, f)?)));
        let directories = dir
            .directories
            .iter()
            .map(|d| Ok((d.name.clone(), Self::directory_entry(node, d)?)));
        let symlinks = dir
            .symlinks
            .iter()
            .map(|s| Ok((s.name.clone(), CasNode::Symlink(s.target.as_str().into()))));
        files.chain(directories).chain(symlinks).collect()
    }

    /// Opens a file node: its blob is brought into the local CAS first if needed.
    pub async fn open(&self, node: &CasNode) -> VfsResult<CasHandle> {
        match node {
            CasNode::Command { script, .. } => Ok(CasHandle::Bytes(script.clone())),
            CasNode::File { digest, .. } if digest.is_empty_blob() => {
                Ok(CasHandle::Bytes(Arc::from(&[][..])))
            }
            CasNode::File {
                instance, digest, ..
            } => {
                if let Some(blob) = self.local_blob(digest).await? {
                    return Ok(blob);
                }
                let fill = self.stores.make_local(instance, digest);
                self.bounded("fetching", digest, fill).await?;
                self.local_blob(digest).await?.ok_or(Errno::IO)
            }
            _ => Err(Errno::ISDIR),
        }
    }

    /// A handle on the blob in the local CAS: its file, or (a packed small blob) its bytes. At
    /// once when that needs no wait, else on a blocking thread: opening a file whose path is not
    /// cached, or reading (and the first time verifying) a packed blob, can wait for the disk.
    async fn local_blob(&self, digest: &Digest) -> VfsResult<Option<CasHandle>> {
        let blob = match self.local.open_local_now(digest) {
            Some(blob) => blob,
            None => {
                let (local, digest) = (self.local.clone(), *digest);
                tokio::task::spawn_blocking(move || local.open_local(&digest))
                    .await
                    .map_err(|_| Errno::IO)?
                    .map_err(|e| errno(&e))?
            }
        };
        Ok(blob.map(|blob| match blob {
            LocalBlob::File(file) => CasHandle::Local(Arc::new(file)),
            LocalBlob::Bytes(data) => CasHandle::Bytes(Arc::from(&data[..])),
        }))
    }
}
