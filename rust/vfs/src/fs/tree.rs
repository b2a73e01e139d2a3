//! What changes the writable trees (scratch/, and the staged outputs under outputs/): creating,
//! linking, unlinking and renaming names, and changing attributes.

use super::{check_name, handles::Handle, meta_mut, Node, Table, Vfs, ROOT, SCRATCH_ROOT};
use crate::attr::{Attr, Errno, FileKind, SetAttr, VfsResult};
use crate::cas::CasNode;
use crate::scratch::{Meta, ScratchNode};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::SystemTime;

impl Vfs {
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
}

fn perm(mode: u32) -> u16 {
    (mode & 0o7777) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::tests::{name, vfs};
    use crate::fs::{CAS_ROOT, SCRATCH_ROOT};
    use clientd_digest::InstanceName;
    use clientd_store::BlobStore;

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

    #[tokio::test]
    async fn cas_nodes_link_into_scratch_but_stay_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let (vfs, local) = vfs(dir.path(), 1 << 20);
        let data = bytes::Bytes::from_static(b"content");
        let digest = clientd_digest::DigestFunction::Sha256.digest_of(&data);
        local
            .write_bytes(&InstanceName::default(), &digest, data)
            .await
            .unwrap();
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
