//! The inode table: every node the kernel may name, by inode number, with the references that
//! keep it alive.

use super::{Entry, Node, CAS_ROOT, FIRST_DYNAMIC};
use crate::attr::{Errno, VfsResult};
use crate::cas::CasNode;
use crate::scratch::{Meta, Pool, PoolFile, ScratchNode};
use clientd_digest::InstanceName;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::sync::Arc;

/// The most cas/ nodes that listings keep interned without a lookup (fewer in tests, to reach).
const MAX_LISTED: usize = if cfg!(test) { 1_000 } else { 100_000 };

pub(crate) struct Table {
    pub(crate) entries: HashMap<u64, Entry>,
    /// cas/ nodes reached by path are interned: the same path is the same inode while it is
    /// known. Staged outputs are not: each is its own node.
    cas_index: HashMap<CasNode, u64>,
    /// cas/ nodes interned by listings, oldest first. The kernel takes no reference to what a
    /// listing names (only lookups are forgotten later), so beyond [`MAX_LISTED`] the oldest are
    /// collected unless a lookup holds them: a later lookup interns them again.
    listed: VecDeque<u64>,
    next: u64,
    /// Storage of file nodes collected while the table is locked, removed once it is not (see
    /// [`Locked`]).
    pub(crate) dropped_files: Vec<Arc<PoolFile>>,
}

impl Table {
    /// A table of the fixed `entries`; cas/'s root is interned.
    pub(super) fn new(entries: HashMap<u64, Entry>) -> Self {
        Table {
            entries,
            cas_index: HashMap::from([(CasNode::Instance(InstanceName::default()), CAS_ROOT)]),
            listed: VecDeque::new(),
            next: FIRST_DYNAMIC,
            dropped_files: Vec::new(),
        }
    }

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

    pub(super) fn intern(&mut self, node: CasNode) -> u64 {
        match self.cas_index.get(&node) {
            Some(&ino) => ino,
            None => {
                let ino = self.insert(Node::Cas(node.clone()), 0, 0);
                self.cas_index.insert(node, ino);
                ino
            }
        }
    }

    /// [`Table::intern`] for a listing: see [`Table::listed`].
    pub(super) fn intern_listed(&mut self, node: CasNode) -> u64 {
        let before = self.next;
        let ino = self.intern(node);
        if ino >= before {
            self.listed.push_back(ino);
            while self.listed.len() > MAX_LISTED {
                if let Some(old) = self.listed.pop_front() {
                    self.collect(old);
                }
            }
        }
        ino
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
    pub(super) fn add_child(&mut self, parent: u64, name: &OsStr, ino: u64) -> VfsResult<()> {
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
    pub(super) fn pool_of(&self, dir: u64) -> VfsResult<Arc<Pool>> {
        match &self.get(dir)?.node {
            Node::Scratch(ScratchNode::Dir { pool, .. }) => Ok(pool.clone()),
            Node::Scratch(_) => Err(Errno::NOTDIR),
            _ => Err(Errno::ACCES),
        }
    }

    /// Forgets a file's cached digest: its content changed.
    pub(super) fn changed(&mut self, ino: u64) {
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
