//! The inode table, locked. Every file system call takes the one lock, so what runs under it
//! must be short: pool files of nodes dropped while it is held (an unlink, a Clean of a whole
//! output tree, a staged output replaced) are removed once it is let go, not under it. Freeing a
//! large file's blocks can take milliseconds, and a Clean removes one file per output.

use crate::fs::Table;
use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, MutexGuard};

pub(crate) struct Locked<'a> {
    /// Always there until dropped.
    guard: Option<MutexGuard<'a, Table>>,
}

impl<'a> Locked<'a> {
    pub(crate) fn new(table: &'a Mutex<Table>) -> Self {
        Locked {
            guard: Some(table.lock().unwrap()),
        }
    }
}

impl Deref for Locked<'_> {
    type Target = Table;

    fn deref(&self) -> &Table {
        self.guard.as_ref().expect("held until dropped")
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Table {
        self.guard.as_mut().expect("held until dropped")
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let mut table = self.guard.take().expect("held until dropped");
        let dropped = std::mem::take(&mut table.dropped_files);
        drop(table);
        for file in dropped {
            file.remove();
        }
    }
}
