//! The whole file system as an inode table: the fixed top level, the cas/ view and scratch/.
//!
//! Every operation the FUSE adapter forwards has a method here, taking inode numbers and names
//! and returning attributes or an errno, so the semantics are testable without mounting.
//! Operations that may need the network (cas/ lookups, listings and opens) are async; the rest
//! are quick and synchronous. The table lock is never held across an await.
//!
//! This module has lookups, attributes and listings; [`table`] the inode table itself;
//! [`handles`] open files; [`tree`] what changes the writable trees (create, link, rename, ...).

mod handles;
mod table;
#[cfg(test)]
mod tests;
mod tree;

use crate::attr::{
    Attr, Errno, FileKind, Statfs, VfsResult, CAS_NLINK, CAS_TIME, IMMUTABLE_TTL, MUTABLE_TTL,
};
use crate::cas::{CasNode, CasView};
use crate::locked::Locked;
use crate::scratch::{Meta, Pool, ScratchNode};
use clientd_digest::InstanceName;
use handles::Handle;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::UNIX_EPOCH;
pub(crate) use table::{check_name, meta_mut, Table};

pub const ROOT: u64 = 1;
pub const CAS_ROOT: u64 = 2;
pub const SCRATCH_ROOT: u64 = 3;
pub const OUTPUTS_ROOT: u64 = 4;
const FIRST_DYNAMIC: u64 = 16;

pub(crate) enum Node {
    Root,
    /// `outputs/`: one directory per output base, created by the Output Service only.
    Outputs {
        children: BTreeMap<OsString, u64>,
    },
    Cas(CasNode),
    Scratch(ScratchNode),
}

pub(crate) struct Entry {
    pub(crate) node: Node,
    /// References the kernel holds (lookups not yet forgotten).
    pub(crate) lookups: u64,
    /// Directory entries in writable trees naming this node.
    pub(crate) links: u32,
}

pub struct Vfs {
    /// Locked only through [`Vfs::table`], which removes dropped files once it is let go.
    table: Mutex<Table>,
    pub(crate) cas: CasView,
    /// scratch/'s pool (statfs reports it).
    pool: Arc<Pool>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_handle: AtomicU64,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Tells the kernel to forget names changed behind its back (by the Output Service).
    invalidator: OnceLock<Box<dyn Invalidate>>,
}

/// Drops the kernel's cached lookup of a name (FUSE's `notify_inval_entry`). Changes made through
/// the file system need none; changes the Output Service makes do: a re-staged output must not be
/// read through the old inode the kernel still remembers.
pub trait Invalidate: Send + Sync {
    fn entry(&self, parent: u64, name: &OsStr);
}

/// How far [`Vfs::lookup_step`] got.
enum Step {
    Done(VfsResult<Attr>),
    /// The parent is this cas/ directory; its child must be resolved.
    Cas(CasNode),
}

/// Directory entries as `readdir` returns them (without `.` and `..`).
pub type Listing = Vec<(u64, FileKind, OsString)>;

impl Vfs {
    /// The inode table, locked (see [`Locked`]).
    pub(crate) fn table(&self) -> Locked<'_> {
        Locked::new(&self.table)
    }

    pub fn new(cas: CasView, pool: Arc<Pool>, uid: u32, gid: u32) -> Self {
        let mut entries = HashMap::new();
        let fixed = |node| Entry {
            node,
            lookups: 1,
            links: 1,
        };
        entries.insert(ROOT, fixed(Node::Root));
        entries.insert(
            CAS_ROOT,
            fixed(Node::Cas(CasNode::Instance(InstanceName::default()))),
        );
        entries.insert(
            SCRATCH_ROOT,
            fixed(Node::Scratch(ScratchNode::Dir {
                children: BTreeMap::new(),
                parent: ROOT,
                meta: Meta::new(0o777, uid, gid),
                pool: pool.clone(),
            })),
        );
        entries.insert(
            OUTPUTS_ROOT,
            fixed(Node::Outputs {
                children: BTreeMap::new(),
            }),
        );
        Vfs {
            table: Mutex::new(Table::new(entries)),
            cas,
            pool,
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            uid,
            gid,
            invalidator: OnceLock::new(),
        }
    }

    /// Set once the file system is mounted.
    pub fn set_invalidator(&self, invalidator: Box<dyn Invalidate>) {
        let _ = self.invalidator.set(invalidator);
    }

    /// Invalidates names in the kernel's cache; call without the table locked (the kernel may
    /// call back into the file system meanwhile).
    pub(crate) fn invalidate(&self, stale: Vec<(u64, OsString)>) {
        if let Some(invalidator) = self.invalidator.get() {
            for (parent, name) in stale {
                invalidator.entry(parent, &name);
            }
        }
    }

    fn attr_of(&self, ino: u64, entry: &Entry) -> VfsResult<Attr> {
        let cas_time = UNIX_EPOCH + CAS_TIME;
        let fixed = |kind, size: u64, perm, nlink| Attr {
            ino,
            kind,
            size,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            atime: cas_time,
            mtime: cas_time,
            ctime: cas_time,
            ttl: IMMUTABLE_TTL,
        };
        let scratch = |kind, size, nlink, meta: &Meta| Attr {
            ino,
            kind,
            size,
            perm: meta.perm,
            nlink,
            uid: meta.uid,
            gid: meta.gid,
            atime: meta.atime,
            mtime: meta.mtime,
            ctime: meta.ctime,
            ttl: MUTABLE_TTL,
        };
        Ok(match &entry.node {
            Node::Root => fixed(FileKind::Directory, 0, 0o555, 5),
            Node::Outputs { .. } => fixed(FileKind::Directory, 0, 0o555, 2),
            Node::Cas(cas) => match cas {
                CasNode::Instance(_) | CasNode::KindDir(..) => {
                    fixed(FileKind::Directory, 0, 0o111, 2)
                }
                CasNode::Blobs(_)
                | CasNode::Function(..)
                | CasNode::Directory { .. }
                | CasNode::TreeDir { .. } => fixed(FileKind::Directory, 0, 0o555, 2),
                CasNode::File {
                    digest, executable, ..
                } => {
                    let perm = if *executable { 0o555 } else { 0o444 };
                    fixed(FileKind::File, digest.size(), perm, CAS_NLINK)
                }
                CasNode::Symlink(target) => fixed(FileKind::Symlink, target.len() as u64, 0o777, 1),
                CasNode::Command { script, .. } => {
                    fixed(FileKind::File, script.len() as u64, 0o555, CAS_NLINK)
                }
            },
            Node::Scratch(node) => match node {
                ScratchNode::Dir { meta, .. } => scratch(FileKind::Directory, 0, 2, meta),
                ScratchNode::File { file, meta, .. } => {
                    scratch(FileKind::File, file.size(), entry.links, meta)
                }
                ScratchNode::Symlink { target, meta } => {
                    scratch(FileKind::Symlink, target.len() as u64, entry.links, meta)
                }
            },
        })
    }

    fn attr(&self, table: &Table, ino: u64) -> VfsResult<Attr> {
        self.attr_of(ino, table.get(ino)?)
    }

    /// Counts a reference the kernel now holds and returns the attributes.
    fn referenced(&self, table: &mut Table, ino: u64) -> VfsResult<Attr> {
        table.get_mut(ino)?.lookups += 1;
        self.attr(table, ino)
    }

    /// A lookup in the table: answered, or a cas/ directory whose child must be resolved.
    fn lookup_step(&self, parent: u64, name: &OsStr) -> Step {
        let mut table = self.table();
        let fixed_child =
            |children: &BTreeMap<OsString, u64>, dot: u64, dotdot: u64| match name.to_str() {
                Some(".") => Ok(dot),
                Some("..") => Ok(dotdot),
                _ => children.get(name).copied().ok_or(Errno::NOENT),
            };
        let ino = match table.get(parent).map(|e| &e.node) {
            Err(e) => Err(e),
            Ok(Node::Root) => match name.to_str() {
                Some("cas") => Ok(CAS_ROOT),
                Some("scratch") => Ok(SCRATCH_ROOT),
                Some("outputs") => Ok(OUTPUTS_ROOT),
                _ => Err(Errno::NOENT),
            },
            Ok(Node::Outputs { children }) => fixed_child(children, OUTPUTS_ROOT, ROOT),
            Ok(Node::Scratch(ScratchNode::Dir {
                children,
                parent: up,
                ..
            })) => fixed_child(children, parent, *up),
            Ok(Node::Scratch(_)) => Err(Errno::NOTDIR),
            Ok(Node::Cas(cas)) => return Step::Cas(cas.clone()),
        };
        Step::Done(ino.and_then(|ino| self.referenced(&mut table, ino)))
    }

    fn found(&self, child: CasNode) -> VfsResult<Attr> {
        let mut table = self.table();
        let ino = table.intern(child);
        self.referenced(&mut table, ino)
    }

    /// A lookup that needs no waiting (fixed directories, writable trees, cas/ names that the
    /// local CAS or parsed messages answer), so the FUSE thread can answer it at once. None: use
    /// [`Vfs::lookup`].
    pub fn lookup_now(&self, parent: u64, name: &OsStr) -> Option<VfsResult<Attr>> {
        let cas_parent = match self.lookup_step(parent, name) {
            Step::Done(done) => return Some(done),
            Step::Cas(cas) => cas,
        };
        let Some(name) = name.to_str() else {
            return Some(Err(Errno::NOENT));
        };
        let child = self.cas.child_now(&cas_parent, name)?;
        Some(child.and_then(|c| self.found(c)))
    }

    pub async fn lookup(&self, parent: u64, name: &OsStr) -> VfsResult<Attr> {
        let cas_parent = match self.lookup_step(parent, name) {
            Step::Done(done) => return done,
            Step::Cas(cas) => cas,
        };
        let name = name.to_str().ok_or(Errno::NOENT)?;
        let child = self.cas.child(&cas_parent, name).await?;
        self.found(child)
    }

    pub fn forget(&self, ino: u64, count: u64) {
        let mut table = self.table();
        if let Ok(entry) = table.get_mut(ino) {
            entry.lookups = entry.lookups.saturating_sub(count);
            table.collect(ino);
        }
    }

    pub fn getattr(&self, ino: u64) -> VfsResult<Attr> {
        self.attr(&self.table(), ino)
    }

    pub async fn readdir(&self, ino: u64) -> VfsResult<Listing> {
        let cas = {
            let table = self.table();
            match &table.get(ino)?.node {
                Node::Root => {
                    return Ok(vec![
                        (CAS_ROOT, FileKind::Directory, "cas".into()),
                        (OUTPUTS_ROOT, FileKind::Directory, "outputs".into()),
                        (SCRATCH_ROOT, FileKind::Directory, "scratch".into()),
                    ])
                }
                Node::Outputs { children } | Node::Scratch(ScratchNode::Dir { children, .. }) => {
                    return children
                        .iter()
                        .map(|(name, &child)| {
                            Ok((child, self.attr(&table, child)?.kind, name.clone()))
                        })
                        .collect()
                }
                Node::Scratch(_) => return Err(Errno::NOTDIR),
                Node::Cas(cas) => cas.clone(),
            }
        };
        let children = self.cas.list(&cas).await?;
        let mut table = self.table();
        Ok(children
            .into_iter()
            .map(|(name, child)| {
                let kind = match &child {
                    CasNode::Symlink(_) => FileKind::Symlink,
                    c if c.is_dir() => FileKind::Directory,
                    _ => FileKind::File,
                };
                (table.intern_listed(child), kind, name.into())
            })
            .collect())
    }

    /// Whether a node's content never changes (cas/), so the kernel may cache it for good.
    pub fn is_immutable(&self, ino: u64) -> bool {
        let table = self.table();
        matches!(table.get(ino).map(|e| &e.node), Ok(Node::Cas(_)))
    }

    pub fn readlink(&self, ino: u64) -> VfsResult<Vec<u8>> {
        use std::os::unix::ffi::OsStrExt;
        let table = self.table();
        match &table.get(ino)?.node {
            Node::Cas(CasNode::Symlink(target)) => Ok(target.as_bytes().to_vec()),
            Node::Scratch(ScratchNode::Symlink { target, .. }) => Ok(target.as_bytes().to_vec()),
            _ => Err(Errno::INVAL),
        }
    }

    pub fn statfs(&self) -> Statfs {
        const BLOCK: u64 = 4096;
        Statfs {
            block_size: BLOCK as u32,
            blocks: self.pool.max_bytes() / BLOCK,
            blocks_free: self.pool.max_bytes().saturating_sub(self.pool.used()) / BLOCK,
            files: self.table().entries.len() as u64,
            name_max: 255,
        }
    }
}
