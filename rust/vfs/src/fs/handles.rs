//! Open files: a cas/ blob (local, or fetched bytes) or a scratch/ file.

use super::{Node, Vfs};
use crate::attr::{Errno, VfsResult};
use crate::cas::{CasHandle, CasNode};
use crate::scratch::{self, OpenFile, PoolFile, ScratchNode};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// An open file.
#[derive(Clone)]
pub(super) enum Handle {
    Cas(CasHandle),
    Scratch(Arc<OpenFile>),
}

impl Vfs {
    pub(super) fn add_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::SeqCst);
        self.handles.lock().unwrap().insert(fh, handle);
        fh
    }

    /// Opens a file; `write` and `truncate` only succeed in scratch/. A scratch file is opened
    /// and truncated after the table's lock is let go, on a blocking thread (truncating a large
    /// file frees its blocks): the kernel holds a reference to `ino` while it opens it, so the
    /// node and its storage stay meanwhile.
    pub async fn open(&self, ino: u64, write: bool, truncate: bool) -> VfsResult<u64> {
        // What to open, found under the table's lock.
        enum Opened {
            Scratch(Arc<PoolFile>),
            Cas(CasNode),
        }
        let node = {
            let table = self.table();
            match &table.get(ino)?.node {
                Node::Scratch(ScratchNode::File { file, .. }) => Opened::Scratch(file.clone()),
                Node::Cas(cas @ (CasNode::File { .. } | CasNode::Command { .. })) => {
                    Opened::Cas(cas.clone())
                }
                Node::Cas(CasNode::Symlink(_)) | Node::Scratch(ScratchNode::Symlink { .. }) => {
                    return Err(Errno::INVAL)
                }
                _ => return Err(Errno::ISDIR),
            }
        };
        let cas = match node {
            Opened::Cas(cas) => cas,
            Opened::Scratch(file) => {
                let open = tokio::task::spawn_blocking(move || {
                    let open = file.open(write || truncate)?;
                    if truncate {
                        open.set_len(0)?;
                    }
                    Ok::<_, Errno>(open)
                })
                .await
                .map_err(|_| Errno::IO)??;
                if truncate {
                    self.table().changed(ino);
                }
                return Ok(self.add_handle(Handle::Scratch(Arc::new(open))));
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
}
