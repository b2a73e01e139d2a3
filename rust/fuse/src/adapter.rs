//! `fuser::Filesystem` over [`Vfs`]: types in, types out.

use clientd_vfs::{Attr, Errno as VfsErrno, FileKind, SetAttr, Vfs, VfsResult};
use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;
use tokio::runtime::Handle;

pub struct Adapter {
    pub vfs: Arc<Vfs>,
    pub runtime: Handle,
    /// Kernel reads of local CAS files go straight to the backing file (FUSE passthrough, Linux
    /// >= 6.9, needs CAP_SYS_ADMIN); off when the kernel or our privileges do not allow it.
    pub passthrough: Arc<Passthrough>,
}

/// Backing files registered with the kernel: one per inode while any handle has it open.
#[derive(Default)]
pub struct Passthrough {
    enabled: AtomicBool,
    by_inode: Mutex<HashMap<u64, Weak<BackingId>>>,
    by_handle: Mutex<HashMap<u64, Arc<BackingId>>>,
}

impl Passthrough {
    /// Opens `fh` with the kernel reading `file` directly; false if passthrough is unavailable.
    fn open(
        &self,
        ino: u64,
        fh: u64,
        file: &std::fs::File,
        reply: &ReplyOpen,
    ) -> Option<Arc<BackingId>> {
        if !self.enabled.load(Ordering::Relaxed) {
            return None;
        }
        let mut by_inode = self.by_inode.lock().unwrap();
        let id = match by_inode.get(&ino).and_then(Weak::upgrade) {
            Some(id) => id,
            None => match reply.open_backing(file) {
                Ok(id) => {
                    let id = Arc::new(id);
                    by_inode.insert(ino, Arc::downgrade(&id));
                    id
                }
                Err(e) => {
                    tracing::info!(
                        "FUSE passthrough unavailable ({e}); cas/ reads go through clientd"
                    );
                    self.enabled.store(false, Ordering::Relaxed);
                    return None;
                }
            },
        };
        by_inode.retain(|_, weak| weak.strong_count() > 0);
        self.by_handle.lock().unwrap().insert(fh, id.clone());
        Some(id)
    }

    fn release(&self, fh: u64) {
        self.by_handle.lock().unwrap().remove(&fh);
    }
}

fn errno(e: VfsErrno) -> Errno {
    Errno::from_i32(e.0)
}

fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: attr.atime,
        mtime: attr.mtime,
        ctime: attr.ctime,
        crtime: attr.mtime,
        kind: file_type(attr.kind),
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::Directory => FileType::Directory,
        FileKind::File => FileType::RegularFile,
        FileKind::Symlink => FileType::Symlink,
    }
}

fn entry(reply: ReplyEntry, result: VfsResult<Attr>) {
    match result {
        Ok(attr) => reply.entry(&attr.ttl, &file_attr(&attr), Generation(0)),
        Err(e) => reply.error(errno(e)),
    }
}

fn empty(reply: ReplyEmpty, result: VfsResult<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl Filesystem for Adapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let passthrough = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(2).is_ok();
        self.passthrough
            .enabled
            .store(passthrough, Ordering::Relaxed);
        // As much readahead as the kernel allows: sequential reads of large blobs dominate.
        if let Err(most) = config.set_max_readahead(u32::MAX) {
            let _ = config.set_max_readahead(most);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if let Some(result) = self.vfs.lookup_now(parent.0, name) {
            return entry(reply, result);
        }
        let (vfs, name) = (self.vfs.clone(), name.to_os_string());
        self.runtime
            .spawn(async move { entry(reply, vfs.lookup(parent.0, &name).await) });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.vfs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.vfs.getattr(ino.0) {
            Ok(attr) => reply.attr(&attr.ttl, &file_attr(&attr)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let changes = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time),
            mtime: mtime.map(time),
        };
        match self.vfs.setattr(ino.0, changes) {
            Ok(attr) => reply.attr(&attr.ttl, &file_attr(&attr)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.vfs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        entry(reply, self.vfs.mkdir(parent.0, name, mode & !umask));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.vfs.unlink(parent.0, name));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.vfs.rmdir(parent.0, name));
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        entry(
            reply,
            self.vfs.symlink(parent.0, link_name, target.as_os_str()),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            return reply.error(Errno::from_i32(libc::EINVAL));
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        empty(
            reply,
            self.vfs
                .rename(parent.0, name, newparent.0, newname, no_replace),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        entry(reply, self.vfs.link(ino.0, newparent.0, newname));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        let truncate = flags.0 & libc::O_TRUNC != 0;
        let (vfs, passthrough) = (self.vfs.clone(), self.passthrough.clone());
        self.runtime.spawn(async move {
            match vfs.open(ino.0, write, truncate).await {
                Ok(fh) if vfs.is_immutable(ino.0) => {
                    let backing = vfs.backing_file(fh);
                    match backing.and_then(|file| passthrough.open(ino.0, fh, &file, &reply)) {
                        Some(id) => {
                            reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id)
                        }
                        // cas/ content never changes: the kernel may keep its pages across opens.
                        None => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
                    }
                }
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.vfs.read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.vfs.write(ino.0, fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.passthrough.release(fh.0);
        self.vfs.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let vfs = self.vfs.clone();
        self.runtime.spawn(async move {
            let listing = match vfs.readdir(ino.0).await {
                Ok(listing) => listing,
                Err(e) => return reply.error(errno(e)),
            };
            let dots = [
                (ino.0, FileKind::Directory, ".".into()),
                (ino.0, FileKind::Directory, "..".into()),
            ];
            let entries = dots
                .into_iter()
                .chain(listing)
                .enumerate()
                .skip(offset as usize);
            for (index, (child, kind, name)) in entries {
                if reply.add(INodeNo(child), index as u64 + 1, file_type(kind), &name) {
                    break;
                }
            }
            reply.ok();
        });
    }

    /// No extended attributes; ENOSYS makes the kernel stop asking (quietly, unlike the default).
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    /// No ioctls: "not a terminal", as for any regular file.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::from_i32(libc::ENOTTY));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.vfs.statfs();
        reply.statfs(
            s.blocks,
            s.blocks_free,
            s.blocks_free,
            s.files,
            u64::MAX / 2,
            s.block_size,
            s.name_max,
            s.block_size,
        );
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.vfs.create(parent.0, name, mode & !umask) {
            Ok((attr, fh)) => reply.created(
                &attr.ttl,
                &file_attr(&attr),
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(errno(e)),
        }
    }
}
