//! The whole file system as an inode table: the fixed top level, the cas/ view and scratch/.
//!
//! Every operation the FUSE adapter forwards has a method here, taking inode numbers and names
//! and returning attributes or an errno, so the semantics are testable without mounting.
//! Operations that may need the network (cas/ lookups, listings and opens) are async; the rest
//! are quick and synchronous. The table lock is never held across an await.

use crate::attr::{
    Attr, Errno, FileKind, SetAttr, Statfs, VfsResult, CAS_NLINK, CAS_TIME, IMMUTABLE_TTL,
    MUTABLE_TTL,
};
use crate::cas::{CasHandle, CasNode, CasView};
use crate::locked::Locked;
use crate::scratch::{self, Meta, OpenFile, Pool, PoolFile, ScratchNode};
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

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

pub(crate) struct Table {
    pub(crate) entries: HashMap<u64, Entry>,
    /// cas/ nodes reached by path are interned: the same path is the same inode while it is
    /// known. Staged outputs are not: each is its own node.
    cas_index: HashMap<CasNode, u64>,
    next: u64,
    /// Storage of file nodes collected while the table is locked, removed once it is not (see
    /// [`Locked`]).
    pub(crate) dropped_files: Vec<Arc<PoolFile>>,
}

impl Table {
    pub(crate) fn get(&self, ino: u64) -> VfsResult<&Entry> {
        self.entries.get(&ino).ok_or(Errno::NOENT)
    }

    pub(crate) fn get_mut(&mut self, ino: u64) -> VfsResult<&mut Entry> {
        self.entries.get_mut(&ino).ok_or(Errno::NOENT)
    }

    pub(crate) fn insert(&mut self, node: Node, lookups: u64, links: u32) -> u64 {
        let ino = self.next;
        self.next += 1;
        self.entries.insert(
            ino,
            Entry {
                node,
                lookups,
                links,
            },
        );
        ino
    }

    fn intern(&mut self, node: CasNode) -> u64 {
        match self.cas_index.get(&node) {
            Some(&ino) => ino,
            None => {
                let ino = self.insert(Node::Cas(node.clone()), 0, 0);
                self.cas_index.insert(node, ino);
                ino
            }
        }
    }

    /// Drops a dynamic node nobody refers to any more; a file's storage goes with it.
    pub(crate) fn collect(&mut self, ino: u64) {
        let unused = self
            .entries
            .get(&ino)
            .is_some_and(|e| e.lookups == 0 && e.links == 0);
        if ino < FIRST_DYNAMIC || !unused {
            return;
        }
        match self.entries.remove(&ino).map(|e| e.node) {
            Some(Node::Cas(cas)) if self.cas_index.get(&cas) == Some(&ino) => {
                self.cas_index.remove(&cas);
            }
            Some(Node::Scratch(ScratchNode::File { file, .. })) => self.dropped_files.push(file),
            _ => {}
        }
    }

    pub(crate) fn scratch_dir(&mut self, ino: u64) -> VfsResult<&mut BTreeMap<OsString, u64>> {
        match &mut self.get_mut(ino)?.node {
            Node::Scratch(ScratchNode::Dir { children, .. }) => Ok(children),
            Node::Scratch(_) => Err(Errno::NOTDIR),
            _ => Err(Errno::ACCES),
        }
    }

    /// Adds `name -> ino` to scratch directory `parent`; EEXIST if taken.
    fn add_child(&mut self, parent: u64, name: &OsStr, ino: u64) -> VfsResult<()> {
        check_name(name)?;
        let children = self.scratch_dir(parent)?;
        if children.contains_key(name) {
            return Err(Errno::EXIST);
        }
        children.insert(name.to_os_string(), ino);
        self.touch(parent);
        Ok(())
    }

    pub(crate) fn touch(&mut self, ino: u64) {
        if let Some(Entry {
            node: Node::Scratch(node),
            ..
        }) = self.entries.get_mut(&ino)
        {
            meta_mut(node).touch();
        }
    }

    /// The pool of a writable directory.
    fn pool_of(&self, dir: u64) -> VfsResult<Arc<Pool>> {
        match &self.get(dir)?.node {
            Node::Scratch(ScratchNode::Dir { pool, .. }) => Ok(pool.clone()),
            Node::Scratch(_) => Err(Errno::NOTDIR),
            _ => Err(Errno::ACCES),
        }
    }

    /// Forgets a file's cached digest: its content changed.
    fn changed(&mut self, ino: u64) {
        if let Some(Entry {
            node: Node::Scratch(ScratchNode::File { digest, meta, .. }),
            ..
        }) = self.entries.get_mut(&ino)
        {
            *digest = None;
            meta.touch();
        }
    }
}

pub(crate) fn meta_mut(node: &mut ScratchNode) -> &mut Meta {
    match node {
        ScratchNode::Dir { meta, .. }
        | ScratchNode::File { meta, .. }
        | ScratchNode::Symlink { meta, .. } => meta,
    }
}

pub(crate) fn check_name(name: &OsStr) -> VfsResult<()> {
    if name.len() > 255 {
        return Err(Errno::NAMETOOLONG);
    }
    if name.is_empty() || name == "." || name == ".." {
        return Err(Errno::INVAL);
    }
    Ok(())
}

/// An open file.
#[derive(Clone)]
enum Handle {
    Cas(CasHandle),
    Scratch(Arc<OpenFile>),
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
        entries.insert(CAS_ROOT, fixed(Node::Cas(CasNode::Instance("".into()))));
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
        let cas_index = HashMap::from([(CasNode::Instance("".into()), CAS_ROOT)]);
        Vfs {
            table: Mutex::new(Table {
                entries,
                cas_index,
                next: FIRST_DYNAMIC,
                dropped_files: Vec::new(),
            }),
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
                (table.intern(child), kind, name.into())
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

    fn add_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::SeqCst);
        self.handles.lock().unwrap().insert(fh, handle);
        fh
    }

    /// Opens a file; `write` and `truncate` only succeed in scratch/. A scratch file is opened
    /// and truncated after the table's lock is let go: the kernel holds a reference to `ino`
    /// while it opens it, so the node and its storage stay meanwhile.
    pub async fn open(&self, ino: u64, write: bool, truncate: bool) -> VfsResult<u64> {
        let cas = {
            let table = self.table();
            match &table.get(ino)?.node {
                Node::Scratch(ScratchNode::File { file, .. }) => {
                    let file = file.clone();
                    drop(table);
                    let open = file.open(write || truncate)?;
                    if truncate {
                        open.set_len(0)?;
                        self.table().changed(ino);
                    }
                    return Ok(self.add_handle(Handle::Scratch(Arc::new(open))));
                }
                Node::Cas(cas @ (CasNode::File { .. } | CasNode::Command { .. })) => cas.clone(),
                Node::Cas(CasNode::Symlink(_)) | Node::Scratch(ScratchNode::Symlink { .. }) => {
                    return Err(Errno::INVAL)
                }
                _ => return Err(Errno::ISDIR),
            }
        };
        if write || truncate {
            return Err(Errno::ACCES);
        }
        let handle = self.cas.open(&cas).await?;
        Ok(self.add_handle(Handle::Cas(handle)))
    }

    /// The local CAS file behind an open cas/ file, for the kernel to read directly (FUSE
    /// passthrough); None for other handles.
    pub fn backing_file(&self, fh: u64) -> Option<Arc<std::fs::File>> {
        match self.handles.lock().unwrap().get(&fh)? {
            Handle::Cas(CasHandle::Local(file)) => Some(file.clone()),
            _ => None,
        }
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> VfsResult<Vec<u8>> {
        // The lock only covers finding the handle: reads of different files run in parallel.
        let handle = self.handles.lock().unwrap().get(&fh).cloned();
        match &handle.ok_or(Errno::BADF)? {
            Handle::Cas(CasHandle::Local(file)) => scratch::read_at(file, offset, size),
            Handle::Cas(CasHandle::Bytes(bytes)) => {
                let start = (offset as usize).min(bytes.len());
                let end = (start + size as usize).min(bytes.len());
                Ok(bytes[start..end].to_vec())
            }
            Handle::Scratch(file) => file.read_at(offset, size),
        }
    }

    pub fn write(&self, ino: u64, fh: u64, offset: u64, data: &[u8]) -> VfsResult<u32> {
        let file = match self.handles.lock().unwrap().get(&fh).ok_or(Errno::BADF)? {
            Handle::Scratch(file) => file.clone(),
            Handle::Cas(_) => return Err(Errno::BADF),
        };
        let written = file.write_at(offset, data)?;
        self.table().changed(ino);
        Ok(written)
    }

    pub fn release(&self, fh: u64) {
        self.handles.lock().unwrap().remove(&fh);
    }

    /// Creates and opens a file. Its storage is created before the table is locked (a system
    /// call), and removed again if the name turns out to be taken.
    pub fn create(&self, parent: u64, name: &OsStr, mode: u32) -> VfsResult<(Attr, u64)> {
        check_name(name)?;
        let pool = self.table().pool_of(parent)?;
        let open = pool.create()?;
        let mut table = self.table();
        let node = ScratchNode::File {
            file: open.node().clone(),
            meta: Meta::new(perm(mode), self.uid, self.gid),
            digest: None,
        };
        let ino = match self.add_scratch(&mut table, parent, name, node) {
            Ok(ino) => ino,
            Err(e) => {
                table.dropped_files.push(open.node().clone());
                return Err(e);
            }
        };
        let attr = self.attr(&table, ino)?;
        drop(table);
        Ok((attr, self.add_handle(Handle::Scratch(Arc::new(open)))))
    }

    /// Adds a new scratch node under `parent`, referenced once by the kernel.
    pub(crate) fn add_scratch(
        &self,
        table: &mut Table,
        parent: u64,
        name: &OsStr,
        node: ScratchNode,
    ) -> VfsResult<u64> {
        check_name(name)?;
        let children = table.scratch_dir(parent)?;
        if children.contains_key(name) {
            return Err(Errno::EXIST);
        }
        let ino = table.insert(Node::Scratch(node), 1, 0);
        table.add_child(parent, name, ino)?;
        table.get_mut(ino)?.links = 1;
        Ok(ino)
    }

    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32) -> VfsResult<Attr> {
        let mut table = self.table();
        let node = ScratchNode::Dir {
            children: BTreeMap::new(),
            parent,
            meta: Meta::new(perm(mode), self.uid, self.gid),
            pool: table.pool_of(parent)?,
        };
        let ino = self.add_scratch(&mut table, parent, name, node)?;
        self.attr(&table, ino)
    }

    pub fn symlink(&self, parent: u64, name: &OsStr, target: &OsStr) -> VfsResult<Attr> {
        let mut table = self.table();
        let node = ScratchNode::Symlink {
            target: target.to_os_string(),
            meta: Meta::new(0o777, self.uid, self.gid),
        };
        let ino = self.add_scratch(&mut table, parent, name, node)?;
        self.attr(&table, ino)
    }

    /// A hard link to any non-directory node (cas/ files included) in a scratch directory.
    pub fn link(&self, ino: u64, parent: u64, name: &OsStr) -> VfsResult<Attr> {
        let mut table = self.table();
        match &table.get(ino)?.node {
            Node::Cas(cas) if !cas.is_dir() => {}
            Node::Scratch(ScratchNode::File { .. } | ScratchNode::Symlink { .. }) => {}
            _ => return Err(Errno::PERM),
        }
        table.add_child(parent, name, ino)?;
        let entry = table.get_mut(ino)?;
        entry.links += 1;
        entry.lookups += 1;
        table.touch(ino);
        self.attr(&table, ino)
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> VfsResult<()> {
        let mut table = self.table();
        let ino = *table.scratch_dir(parent)?.get(name).ok_or(Errno::NOENT)?;
        if self.attr(&table, ino)?.kind == FileKind::Directory {
            return Err(Errno::ISDIR);
        }
        table.scratch_dir(parent)?.remove(name);
        table.touch(parent);
        self.unlinked(&mut table, ino);
        Ok(())
    }

    fn unlinked(&self, table: &mut Table, ino: u64) {
        if let Ok(entry) = table.get_mut(ino) {
            entry.links = entry.links.saturating_sub(1);
            if let Node::Scratch(node) = &mut entry.node {
                meta_mut(node).ctime = SystemTime::now();
            }
        }
        table.collect(ino);
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> VfsResult<()> {
        let mut table = self.table();
        let ino = *table.scratch_dir(parent)?.get(name).ok_or(Errno::NOENT)?;
        match &table.get(ino)?.node {
            Node::Scratch(ScratchNode::Dir { children, .. }) if children.is_empty() => {}
            Node::Scratch(ScratchNode::Dir { .. }) => return Err(Errno::NOTEMPTY),
            _ => return Err(Errno::NOTDIR),
        }
        table.scratch_dir(parent)?.remove(name);
        table.touch(parent);
        self.unlinked(&mut table, ino);
        Ok(())
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> VfsResult<()> {
        check_name(new_name)?;
        let mut table = self.table();
        let ino = *table.scratch_dir(parent)?.get(name).ok_or(Errno::NOENT)?;
        // Each tree keeps its files in its own pool: no renames between scratch/ and outputs/.
        if !Arc::ptr_eq(&table.pool_of(parent)?, &table.pool_of(new_parent)?) {
            return Err(Errno::XDEV);
        }
        let moving_dir = self.attr(&table, ino)?.kind == FileKind::Directory;
        if moving_dir {
            // A directory cannot move into itself or below.
            let mut up = new_parent;
            while up != ROOT && up != SCRATCH_ROOT {
                if up == ino {
                    return Err(Errno::INVAL);
                }
                up = match &table.get(up)?.node {
                    Node::Scratch(ScratchNode::Dir { parent, .. }) => *parent,
                    _ => break,
                };
            }
        }
        if let Some(&existing) = table.scratch_dir(new_parent)?.get(new_name) {
            if existing == ino {
                return Ok(());
            }
            if no_replace {
                return Err(Errno::EXIST);
            }
            match (&table.get(existing)?.node, moving_dir) {
                (Node::Scratch(ScratchNode::Dir { children, .. }), true)
                    if !children.is_empty() =>
                {
                    return Err(Errno::NOTEMPTY)
                }
                (Node::Scratch(ScratchNode::Dir { .. }), true) => {}
                (Node::Scratch(ScratchNode::Dir { .. }), false) => return Err(Errno::ISDIR),
                (_, true) => return Err(Errno::NOTDIR),
                _ => {}
            }
            table.scratch_dir(new_parent)?.remove(new_name);
            self.unlinked(&mut table, existing);
        }
        table.scratch_dir(parent)?.remove(name);
        table
            .scratch_dir(new_parent)?
            .insert(new_name.to_os_string(), ino);
        if let Node::Scratch(ScratchNode::Dir { parent: up, .. }) = &mut table.get_mut(ino)?.node {
            *up = new_parent;
        }
        table.touch(parent);
        table.touch(new_parent);
        Ok(())
    }

    /// Changes a scratch/ node. On cas/ files a chmod or utimens is accepted and ignored: Bazel
    /// calls `chmod` on every output it symlinks into cas/ (`setExecutable`), even when nothing
    /// changes, and fails the action if that fails. Their content cannot change: truncation is
    /// refused. Every node belongs to the daemon's user: a chown to anyone else is refused (EPERM),
    /// one to that same owner changes nothing, as POSIX allows.
    pub fn setattr(&self, ino: u64, changes: SetAttr) -> VfsResult<Attr> {
        if changes.uid.is_some_and(|uid| uid != self.uid)
            || changes.gid.is_some_and(|gid| gid != self.gid)
        {
            return Err(Errno::PERM);
        }
        if let Some(size) = changes.size {
            // Truncation is a system call: done before the table is locked again for the rest.
            let file = match &self.table().get(ino)?.node {
                Node::Scratch(ScratchNode::File { file, .. }) => Some(file.clone()),
                _ => None,
            };
            if let Some(file) = file {
                file.open(true)?.set_len(size)?;
            }
        }
        let mut table = self.table();
        let node = match &mut table.get_mut(ino)?.node {
            Node::Scratch(node) => node,
            Node::Cas(CasNode::File { .. } | CasNode::Command { .. }) if changes.size.is_none() => {
                return self.attr(&table, ino)
            }
            _ => return Err(Errno::PERM),
        };
        if changes.size.is_some() {
            match node {
                ScratchNode::File { digest, .. } => *digest = None,
                ScratchNode::Dir { .. } => return Err(Errno::ISDIR),
                ScratchNode::Symlink { .. } => return Err(Errno::INVAL),
            }
        }
        let meta = meta_mut(node);
        if let Some(mode) = changes.mode {
            meta.perm = perm(mode);
        }
        if let Some(atime) = changes.atime {
            meta.atime = atime;
        }
        if let Some(mtime) = changes.mtime {
            meta.mtime = mtime;
        }
        if changes.size.is_some() {
            meta.touch();
        } else {
            meta.ctime = SystemTime::now();
        }
        self.attr(&table, ino)
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

fn perm(mode: u32) -> u16 {
    (mode & 0o7777) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas::{DigestFunctions, Routing};
    use clientd_digest::DigestFunction;
    use clientd_store::{BlobStore, DiskLruOptions, LocalCas, SystemClock};
    use std::time::Duration;

    /// The front serves local and local/... with every digest function; cas/ follows it.
    struct LocalOnly;

    impl Routing for LocalOnly {
        fn serves(&self, name: &str) -> bool {
            clientd_digest::is_local_instance(name)
        }
        fn digest_functions<'a>(&'a self, _name: &'a str) -> DigestFunctions<'a> {
            Box::pin(async { Some(DigestFunction::ALL.to_vec()) })
        }
    }

    fn vfs(dir: &std::path::Path, pool_bytes: u64) -> (Vfs, Arc<LocalCas>) {
        vfs_with(dir, pool_bytes, Box::new(LocalOnly))
    }

    fn vfs_with(
        dir: &std::path::Path,
        pool_bytes: u64,
        routing: Box<dyn Routing>,
    ) -> (Vfs, Arc<LocalCas>) {
        let options = DiskLruOptions {
            max_bytes: 1 << 20,
            sync_writes: false,
        };
        let local =
            Arc::new(LocalCas::open(&dir.join("cas"), options, Arc::new(SystemClock)).unwrap());
        let cas = CasView::new(
            local.clone(),
            routing,
            local.clone(),
            Duration::from_secs(5),
        );
        let pool = Pool::open_empty(&dir.join("pool"), pool_bytes).unwrap();
        (Vfs::new(cas, pool, 1000, 1000), local)
    }

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[tokio::test]
    async fn scratch_files_are_bounded_and_directories_keep_their_shape() {
        let dir = tempfile::tempdir().unwrap();
        let (vfs, _) = vfs(dir.path(), 10);
        let (file, fh) = vfs.create(SCRATCH_ROOT, name("f"), 0o644).unwrap();
        assert_eq!(vfs.write(file.ino, fh, 0, b"0123456789").unwrap(), 10);
        assert_eq!(vfs.write(file.ino, fh, 10, b"x"), Err(Errno::NOSPC));
        assert_eq!(vfs.read(fh, 2, 3).unwrap(), b"234");
        vfs.setattr(
            file.ino,
            SetAttr {
                size: Some(4),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(vfs.write(file.ino, fh, 4, b"abcdef").unwrap(), 6);
        assert_eq!(vfs.statfs().blocks_free, 0);
        vfs.release(fh);
        assert_eq!(
            vfs.create(SCRATCH_ROOT, name("f"), 0o644).err(),
            Some(Errno::EXIST)
        );

        let a = vfs.mkdir(SCRATCH_ROOT, name("a"), 0o755).unwrap();
        let b = vfs.mkdir(a.ino, name("b"), 0o755).unwrap();
        assert_eq!(
            vfs.rename(SCRATCH_ROOT, name("a"), b.ino, name("x"), false),
            Err(Errno::INVAL)
        );
        assert_eq!(vfs.rmdir(SCRATCH_ROOT, name("a")), Err(Errno::NOTEMPTY));
        assert_eq!(vfs.unlink(SCRATCH_ROOT, name("a")), Err(Errno::ISDIR));
        assert_eq!(
            vfs.rename(SCRATCH_ROOT, name("f"), SCRATCH_ROOT, name("a"), false),
            Err(Errno::ISDIR)
        );
        assert_eq!(
            vfs.rename(SCRATCH_ROOT, name("f"), a.ino, name("b"), true),
            Err(Errno::EXIST)
        );
        vfs.rename(SCRATCH_ROOT, name("f"), b.ino, name("g"), false)
            .unwrap();
        assert_eq!(vfs.lookup(b.ino, name("g")).await.unwrap().size, 10);
        assert_eq!(vfs.lookup(b.ino, name("..")).await.unwrap().ino, a.ino);
        // Unlinking the last name frees its pool space.
        vfs.unlink(b.ino, name("g")).unwrap();
        vfs.forget(file.ino, 2);
        assert_eq!(vfs.pool.used(), 0);
        assert_eq!(
            vfs.mkdir(CAS_ROOT, name("x"), 0o755).err(),
            Some(Errno::ACCES)
        );
    }

    #[tokio::test]
    async fn a_dropped_file_s_storage_is_removed_once_the_table_is_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let (vfs, _) = vfs(dir.path(), 1 << 20);
        let (file, fh) = vfs.create(SCRATCH_ROOT, name("f"), 0o644).unwrap();
        vfs.write(file.ino, fh, 0, b"data").unwrap();
        vfs.release(fh);
        let stored = || std::fs::read_dir(dir.path().join("pool")).unwrap().count();
        assert_eq!(stored(), 1);
        let mut table = vfs.table();
        table.scratch_dir(SCRATCH_ROOT).unwrap().remove(name("f"));
        table.get_mut(file.ino).unwrap().lookups = 0;
        vfs.unlinked(&mut table, file.ino);
        assert!(table.get(file.ino).is_err(), "the node is gone");
        assert_eq!(stored(), 1, "its storage is not removed under the lock");
        drop(table);
        assert_eq!((stored(), vfs.pool.used()), (0, 0));
    }

    #[tokio::test]
    async fn creating_a_taken_name_leaves_no_storage_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (vfs, _) = vfs(dir.path(), 1 << 20);
        let (_, fh) = vfs.create(SCRATCH_ROOT, name("f"), 0o644).unwrap();
        vfs.release(fh);
        assert_eq!(
            vfs.create(SCRATCH_ROOT, name("f"), 0o644).err(),
            Some(Errno::EXIST)
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("pool")).unwrap().count(),
            1
        );
    }

    /// cas/ resolves the instance names the gRPC front serves, and no others: a local blob is
    /// not readable under a name a gRPC call would be refused for.
    #[tokio::test]
    async fn cas_serves_only_routable_instance_names() {
        let dir = tempfile::tempdir().unwrap();
        let (vfs, local) = vfs(dir.path(), 1 << 20);
        let data = bytes::Bytes::from_static(b"content");
        let digest = clientd_digest::DigestFunction::Sha256.digest_of(&data);
        local.write_bytes("", &digest, data).await.unwrap();
        let nosuch = vfs.lookup(CAS_ROOT, name("nosuch")).await.unwrap().ino;
        let x = vfs.lookup(nosuch, name("x")).await.unwrap().ino;
        assert_eq!(vfs.lookup(x, name("blobs")).await.err(), Some(Errno::NOENT));
        assert_eq!(
            vfs.lookup(CAS_ROOT, name("blobs")).await.err(),
            Some(Errno::NOENT)
        );
        let mut ino = CAS_ROOT;
        for part in ["local", "x", "blobs", "sha256", "file"] {
            ino = vfs.lookup(ino, name(part)).await.unwrap().ino;
        }
        assert!(vfs.lookup(ino, name(&digest.file_name())).await.is_ok());
    }

    /// blobs/ lists the digest functions offered for its instance name: those of a cluster that
    /// offers one, EIO while a cluster's offer is unknown (it does not answer).
    #[tokio::test]
    async fn blobs_lists_the_offered_digest_functions() {
        struct Offers;
        impl Routing for Offers {
            fn serves(&self, _name: &str) -> bool {
                true
            }
            fn digest_functions<'a>(&'a self, name: &'a str) -> DigestFunctions<'a> {
                Box::pin(async move { (name == "one").then(|| vec![DigestFunction::Sha256]) })
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let (vfs, _) = vfs_with(dir.path(), 1 << 20, Box::new(Offers));
        let blobs = |instance: &'static str| {
            let vfs = &vfs;
            async move {
                let top = vfs.lookup(CAS_ROOT, name(instance)).await.unwrap().ino;
                let blobs = vfs.lookup(top, name("blobs")).await.unwrap();
                assert_eq!(blobs.perm, 0o555);
                vfs.readdir(blobs.ino).await
            }
        };
        let listed: Vec<OsString> = blobs("one")
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.2)
            .collect();
        assert_eq!(listed, vec![OsString::from("sha256")]);
        assert_eq!(blobs("down").await.err(), Some(Errno::IO));
    }

    #[tokio::test]
    async fn cas_nodes_link_into_scratch_but_stay_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let (vfs, local) = vfs(dir.path(), 1 << 20);
        let data = bytes::Bytes::from_static(b"content");
        let digest = clientd_digest::DigestFunction::Sha256.digest_of(&data);
        local.write_bytes("", &digest, data).await.unwrap();
        let mut ino = CAS_ROOT;
        for part in ["local", "blobs", "sha256", "file"] {
            ino = vfs.lookup(ino, name(part)).await.unwrap().ino;
        }
        let file = vfs.lookup(ino, name(&digest.file_name())).await.unwrap();
        assert_eq!(
            (file.size, file.perm, file.kind),
            (7, 0o444, FileKind::File)
        );
        let again = vfs.lookup(ino, name(&digest.file_name())).await.unwrap();
        assert_eq!(again.ino, file.ino, "the same path is the same inode");

        let linked = vfs.link(file.ino, SCRATCH_ROOT, name("l")).unwrap();
        assert_eq!(linked.ino, file.ino);
        assert_eq!(vfs.open(file.ino, true, false).await, Err(Errno::ACCES));
        // chmod is accepted and ignored (Bazel insists); truncation is refused.
        let unchanged = SetAttr {
            mode: Some(0o777),
            ..Default::default()
        };
        assert_eq!(vfs.setattr(file.ino, unchanged).unwrap().perm, 0o444);
        let truncate = SetAttr {
            size: Some(0),
            ..Default::default()
        };
        assert_eq!(vfs.setattr(file.ino, truncate).err(), Some(Errno::PERM));
        // chown to another owner is refused, to the owner it has accepted.
        for (uid, gid) in [(Some(0), None), (None, Some(0))] {
            let chown = SetAttr {
                uid,
                gid,
                ..Default::default()
            };
            assert_eq!(vfs.setattr(file.ino, chown).err(), Some(Errno::PERM));
        }
        let same = SetAttr {
            uid: Some(1000),
            gid: Some(1000),
            ..Default::default()
        };
        assert_eq!(vfs.setattr(file.ino, same).unwrap().uid, 1000);
        let fh = vfs.open(file.ino, false, false).await.unwrap();
        assert_eq!(vfs.read(fh, 0, 100).unwrap(), b"content");
        // The kernel forgets the cas/ path; the scratch/ link keeps the node.
        vfs.forget(file.ino, 3);
        assert_eq!(
            vfs.lookup(SCRATCH_ROOT, name("l")).await.unwrap().ino,
            file.ino
        );
        let kind_dir = vfs.getattr(ino).unwrap();
        assert_eq!(kind_dir.perm, 0o111);
        assert_eq!(
            vfs.link(ino, SCRATCH_ROOT, name("d")).err(),
            Some(Errno::PERM)
        );
    }
}
