//! The Output Service's view of `outputs/<output base id>/`: writable trees (Bazel's local
//! actions write there like anywhere) into which CAS blobs are staged without being downloaded,
//! and which are saved and restored as lists of entries.

use crate::attr::{Errno, VfsResult};
use crate::cas::CasNode;
use crate::fs::{check_name, Node, Table, Vfs, OUTPUTS_ROOT};
use crate::scratch::{Meta, Pool, ScratchNode};
use clientd_digest::{Digest, DigestFunction, InstanceName};
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::sync::Arc;

/// What an output path holds at one relative path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputEntry {
    Directory,
    /// A CAS blob, read from the instance name's store when opened.
    CasFile {
        instance: InstanceName,
        digest: Digest,
        executable: bool,
    },
    /// A file written in the mount, stored as number `id` of the output path's pool.
    LocalFile {
        id: u64,
        mode: u16,
        digest: Option<Digest>,
    },
    Symlink(String),
}

/// What `lstat` finds at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputStat {
    Directory,
    /// A file; the digest is known without reading for CAS files and for local files hashed before.
    File {
        ino: u64,
        digest: Option<Digest>,
    },
    Symlink(String),
    /// Something else (nothing Bazel writes).
    Other,
}

/// The result of [`Vfs::output_lstat`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lstat {
    Found(OutputStat),
    /// The path goes through the symlink `dir/<name>` pointing at `target`; `rest` is what
    /// follows it.
    ThroughSymlink {
        dir: String,
        target: String,
        rest: String,
    },
}

fn symlink_target(node: &Node) -> Option<String> {
    match node {
        Node::Scratch(ScratchNode::Symlink { target, .. }) => {
            Some(target.to_string_lossy().into_owned())
        }
        Node::Cas(CasNode::Symlink(target)) => Some(target.to_string()),
        _ => None,
    }
}

/// Names the kernel may have cached that no longer mean what they did: (directory, name).
type Stale = Vec<(u64, OsString)>;

/// Splits a relative path into checked components.
fn components(path: &str) -> VfsResult<Vec<&OsStr>> {
    if path.is_empty() || path == "." {
        return Ok(vec![]);
    }
    path.split('/')
        .map(|c| {
            let c = OsStr::new(c);
            check_name(c)?;
            Ok(c)
        })
        .collect()
}

impl Table {
    /// The directory at `components` below `root`, created (with `pool`) where missing.
    fn make_dirs(
        &mut self,
        root: u64,
        components: &[&OsStr],
        uid: u32,
        gid: u32,
    ) -> VfsResult<u64> {
        let mut dir = root;
        for name in components {
            let pool = match &self.get(dir)?.node {
                Node::Scratch(ScratchNode::Dir { pool, .. }) => pool.clone(),
                _ => return Err(Errno::NOTDIR),
            };
            let existing = self.scratch_dir(dir)?.get(*name).copied();
            dir = match existing {
                Some(child) => match &self.get(child)?.node {
                    Node::Scratch(ScratchNode::Dir { .. }) => child,
                    _ => return Err(Errno::NOTDIR),
                },
                None => {
                    let node = ScratchNode::Dir {
                        children: BTreeMap::new(),
                        parent: dir,
                        meta: Meta::new(0o755, uid, gid),
                        pool,
                    };
                    let child = self.insert(Node::Scratch(node), 0, 1);
                    self.scratch_dir(dir)?.insert(name.to_os_string(), child);
                    child
                }
            };
        }
        Ok(dir)
    }

    /// Removes `name` from `dir` and, for directories, everything below it. The kernel may have
    /// the name cached: it is added to `stale`, to be invalidated once the table is unlocked.
    fn remove_entry(&mut self, dir: u64, name: &OsStr, stale: &mut Stale) -> VfsResult<()> {
        let Some(child) = self.scratch_dir(dir)?.remove(name) else {
            return Ok(());
        };
        stale.push((dir, name.to_os_string()));
        self.release_subtree(child);
        Ok(())
    }

    fn release_subtree(&mut self, ino: u64) {
        let children: Vec<u64> = match self.get_mut(ino).map(|e| &mut e.node) {
            Ok(Node::Scratch(ScratchNode::Dir { children, .. })) => {
                std::mem::take(children).into_values().collect()
            }
            _ => vec![],
        };
        for child in children {
            self.release_subtree(child);
        }
        if let Ok(entry) = self.get_mut(ino) {
            entry.links = entry.links.saturating_sub(1);
        }
        self.collect(ino);
    }

    /// The node at `path` below `root`, without following symlinks.
    fn walk(&self, root: u64, components: &[&OsStr]) -> VfsResult<u64> {
        let mut ino = root;
        for name in components {
            ino = match &self.get(ino)?.node {
                Node::Scratch(ScratchNode::Dir { children, .. }) => {
                    *children.get(*name).ok_or(Errno::NOENT)?
                }
                _ => return Err(Errno::NOTDIR),
            };
        }
        Ok(ino)
    }
}

impl Vfs {
    /// `outputs/<id>`, created empty (with `pool` for its files) if it does not exist yet.
    pub fn output_root(&self, id: &str, pool: Arc<Pool>) -> VfsResult<u64> {
        let name = OsStr::new(id);
        check_name(name)?;
        let mut table = self.table();
        let Node::Outputs { children } = &table.get(OUTPUTS_ROOT)?.node else {
            unreachable!("outputs/ is fixed")
        };
        if let Some(&root) = children.get(name) {
            return Ok(root);
        }
        let node = ScratchNode::Dir {
            children: BTreeMap::new(),
            parent: OUTPUTS_ROOT,
            meta: Meta::new(0o755, self.uid, self.gid),
            pool,
        };
        let root = table.insert(Node::Scratch(node), 0, 1);
        if let Node::Outputs { children } = &mut table.get_mut(OUTPUTS_ROOT)?.node {
            children.insert(name.to_os_string(), root);
        }
        Ok(root)
    }

    /// Removes `outputs/<id>` and everything in it (Clean).
    pub fn remove_output_root(&self, id: &str) {
        let mut table = self.table();
        let root = match &mut table.entries.get_mut(&OUTPUTS_ROOT).map(|e| &mut e.node) {
            Some(Node::Outputs { children }) => children.remove(OsStr::new(id)),
            _ => None,
        };
        if let Some(root) = root {
            table.release_subtree(root);
        }
        drop(table);
        self.invalidate(vec![(OUTPUTS_ROOT, OsString::from(id))]);
    }

    /// Puts each entry at its path below `root`, creating parent directories and replacing
    /// whatever was there. One result per entry, in order.
    pub fn stage(&self, root: u64, entries: Vec<(String, OutputEntry)>) -> Vec<VfsResult<()>> {
        let mut stale = Vec::new();
        let mut table = self.table();
        let results = entries
            .into_iter()
            .map(|(path, entry)| self.stage_one(&mut table, root, &path, entry, &mut stale))
            .collect();
        drop(table);
        self.invalidate(stale);
        results
    }

    fn stage_one(
        &self,
        table: &mut Table,
        root: u64,
        path: &str,
        entry: OutputEntry,
        stale: &mut Stale,
    ) -> VfsResult<()> {
        let parts = components(path)?;
        let Some((name, parents)) = parts.split_last() else {
            return match entry {
                OutputEntry::Directory => Ok(()),
                _ => Err(Errno::INVAL),
            };
        };
        let dir = table.make_dirs(root, parents, self.uid, self.gid)?;
        if entry == OutputEntry::Directory {
            if let Some(&existing) = table.scratch_dir(dir)?.get(*name) {
                if matches!(
                    table.get(existing)?.node,
                    Node::Scratch(ScratchNode::Dir { .. })
                ) {
                    return Ok(());
                }
            }
        }
        table.remove_entry(dir, name, stale)?;
        let node = match entry {
            OutputEntry::Directory => {
                let pool = match &table.get(dir)?.node {
                    Node::Scratch(ScratchNode::Dir { pool, .. }) => pool.clone(),
                    _ => return Err(Errno::NOTDIR),
                };
                Node::Scratch(ScratchNode::Dir {
                    children: BTreeMap::new(),
                    parent: dir,
                    meta: Meta::new(0o755, self.uid, self.gid),
                    pool,
                })
            }
            OutputEntry::CasFile {
                instance,
                digest,
                executable,
            } => Node::Cas(CasNode::File {
                instance,
                digest,
                executable,
            }),
            OutputEntry::LocalFile { id, mode, digest } => {
                let pool = match &table.get(dir)?.node {
                    Node::Scratch(ScratchNode::Dir { pool, .. }) => pool.clone(),
                    _ => return Err(Errno::NOTDIR),
                };
                let file = pool.adopt(id).ok_or(Errno::NOENT)?;
                Node::Scratch(ScratchNode::File {
                    file,
                    meta: Meta::new(mode, self.uid, self.gid),
                    digest,
                })
            }
            OutputEntry::Symlink(target) => Node::Scratch(ScratchNode::Symlink {
                target: OsString::from(target),
                meta: Meta::new(0o777, self.uid, self.gid),
            }),
        };
        let ino = table.insert(node, 0, 1);
        table.scratch_dir(dir)?.insert(name.to_os_string(), ino);
        table.touch(dir);
        Ok(())
    }

    /// Removes the entry at `path` below `root` (and everything below it).
    pub fn remove_output(&self, root: u64, path: &str) -> VfsResult<()> {
        let parts = components(path)?;
        let Some((name, parents)) = parts.split_last() else {
            return Err(Errno::INVAL);
        };
        let mut table = self.table();
        let dir = table.walk(root, parents)?;
        let mut stale = Vec::new();
        table.remove_entry(dir, name, &mut stale)?;
        drop(table);
        self.invalidate(stale);
        Ok(())
    }

    /// `lstat` of `path` below `root`. An intermediate symlink is not followed here: the caller
    /// learns where it is and where it points, resolves it, and asks again.
    pub fn output_lstat(&self, root: u64, path: &str) -> VfsResult<Lstat> {
        let table = self.table();
        let parts = components(path)?;
        let mut ino = root;
        for (i, name) in parts.iter().enumerate() {
            ino = match &table.get(ino)?.node {
                Node::Scratch(ScratchNode::Dir { children, .. }) => {
                    *children.get(*name).ok_or(Errno::NOENT)?
                }
                _ => return Err(Errno::NOTDIR),
            };
            let last = i + 1 == parts.len();
            if let (false, Some(target)) = (last, symlink_target(&table.get(ino)?.node)) {
                let join = |p: &[&OsStr]| {
                    p.iter()
                        .map(|c| c.to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/")
                };
                return Ok(Lstat::ThroughSymlink {
                    dir: join(&parts[..i]),
                    target,
                    rest: join(&parts[i + 1..]),
                });
            }
        }
        let stat = match &table.get(ino)?.node {
            Node::Scratch(ScratchNode::Dir { .. }) => OutputStat::Directory,
            Node::Scratch(ScratchNode::File { digest, .. }) => OutputStat::File {
                ino,
                digest: *digest,
            },
            Node::Cas(CasNode::File { digest, .. }) => OutputStat::File {
                ino,
                digest: Some(*digest),
            },
            Node::Cas(node) if node.is_dir() => OutputStat::Directory,
            node => match symlink_target(node) {
                Some(target) => OutputStat::Symlink(target),
                None => OutputStat::Other,
            },
        };
        Ok(Lstat::Found(stat))
    }

    /// The digest of a local file (node `ino`), computed once and kept until the file changes.
    pub fn local_digest(&self, ino: u64, function: DigestFunction) -> VfsResult<Digest> {
        let file = {
            let table = self.table();
            match &table.get(ino)?.node {
                Node::Scratch(ScratchNode::File {
                    digest: Some(d), ..
                }) if d.function() == function => return Ok(*d),
                Node::Scratch(ScratchNode::File { file, .. }) => file.clone(),
                Node::Cas(CasNode::File { digest, .. }) => return Ok(*digest),
                _ => return Err(Errno::INVAL),
            }
        };
        let open = file.open(false)?;
        let size = file.size();
        // Large SHA256TREE files are hashed on several threads (independent subtrees).
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let read = |mut offset: u64, len: u64, sink: &mut dyn FnMut(&[u8])| {
            let end = offset + len;
            while offset < end {
                let chunk = open.read_at(offset, (end - offset).min(1 << 20) as u32)?;
                if chunk.is_empty() {
                    // Shorter than it was a moment ago: being written; no digest yet.
                    return Err(Errno::IO);
                }
                sink(&chunk);
                offset += chunk.len() as u64;
            }
            Ok(())
        };
        let digest = function.digest_of_ranges(size, threads, &read)?;
        let mut table = self.table();
        if let Ok(Node::Scratch(ScratchNode::File {
            digest: cached,
            file: same,
            ..
        })) = table.get_mut(ino).map(|e| &mut e.node)
        {
            // Only if the file did not change meanwhile (a write clears the cache and the size).
            if Arc::ptr_eq(same, &file) && same.size() == size {
                *cached = Some(digest);
            }
        }
        Ok(digest)
    }

    /// Every entry below `root`, parents before children, for saving.
    pub fn snapshot(&self, root: u64) -> Vec<(String, OutputEntry)> {
        let table = self.table();
        let mut out = Vec::new();
        let mut stack = vec![(String::new(), root)];
        while let Some((path, dir)) = stack.pop() {
            let Ok(Node::Scratch(ScratchNode::Dir { children, .. })) =
                table.get(dir).map(|e| &e.node)
            else {
                continue;
            };
            for (name, &child) in children {
                let child_path = if path.is_empty() {
                    name.to_string_lossy().into_owned()
                } else {
                    format!("{path}/{}", name.to_string_lossy())
                };
                let entry = match table.get(child).map(|e| &e.node) {
                    Ok(Node::Scratch(ScratchNode::Dir { .. })) => {
                        stack.push((child_path.clone(), child));
                        OutputEntry::Directory
                    }
                    Ok(Node::Scratch(ScratchNode::File { file, meta, digest })) => {
                        OutputEntry::LocalFile {
                            id: file.id,
                            mode: meta.perm,
                            digest: *digest,
                        }
                    }
                    Ok(Node::Scratch(ScratchNode::Symlink { target, .. })) => {
                        OutputEntry::Symlink(target.to_string_lossy().into_owned())
                    }
                    Ok(Node::Cas(CasNode::File {
                        instance,
                        digest,
                        executable,
                    })) => OutputEntry::CasFile {
                        instance: instance.clone(),
                        digest: *digest,
                        executable: *executable,
                    },
                    Ok(Node::Cas(CasNode::Symlink(target))) => {
                        OutputEntry::Symlink(target.to_string())
                    }
                    _ => continue,
                };
                out.push((child_path, entry));
            }
        }
        out
    }
}
