//! The activity record's files, written by a thread of their own: the record is updated in
//! memory under its lock, and the lines go to this thread in order, so that no call that records
//! an action waits for the file system, and no system call runs under the record's lock.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Sender};
use std::thread::JoinHandle;

/// The first line of a file is the invocation's header.
#[derive(Serialize, Deserialize)]
pub(crate) struct Header {
    pub(crate) invocation: String,
    /// Seconds since the epoch.
    pub(crate) started: u64,
    /// Microseconds since the epoch (absent in files written before it was added).
    #[serde(default)]
    pub(crate) started_micros: u64,
}

enum Job {
    /// Appends `line` to the invocation's file, creating it with its header first.
    Append {
        id: String,
        started_micros: u64,
        line: Vec<u8>,
    },
    /// Removes an evicted invocation's file.
    Remove(String),
    /// Answers once everything sent before it is written.
    Flush(Sender<()>),
}

/// Sends the record's lines to its writing thread, which stops when this is dropped, after
/// writing what it was sent.
pub(crate) struct Writer {
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub(crate) fn start(dir: PathBuf) -> std::io::Result<Self> {
        let (jobs, queue) = channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("activity-writer".into())
            .spawn(move || {
                let mut files = Files { dir, open: None };
                for job in queue {
                    files.run(job);
                }
            })?;
        Ok(Writer {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    pub(crate) fn append(&self, id: &str, started_micros: u64, line: Vec<u8>) {
        self.send(Job::Append {
            id: id.to_string(),
            started_micros,
            line,
        });
    }

    pub(crate) fn remove(&self, id: &str) {
        self.send(Job::Remove(id.to_string()));
    }

    /// Waits until everything sent so far is written.
    pub(crate) fn flush(&self) {
        let (done, written) = channel();
        self.send(Job::Flush(done));
        let _ = written.recv();
    }

    fn send(&self, job: Job) {
        if let Some(jobs) = &self.jobs {
            // The thread only stops once this side is dropped.
            let _ = jobs.send(job);
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writing thread's state: the file written last, kept open.
struct Files {
    dir: PathBuf,
    open: Option<(String, File)>,
}

impl Files {
    fn run(&mut self, job: Job) {
        let result = match job {
            Job::Append {
                id,
                started_micros,
                line,
            } => self.append(&id, started_micros, &line),
            Job::Remove(id) => {
                if matches!(&self.open, Some((open, _)) if *open == id) {
                    self.open = None;
                }
                match std::fs::remove_file(self.dir.join(file_name(&id))) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                }
            }
            Job::Flush(done) => {
                let _ = done.send(());
                Ok(())
            }
        };
        // A failure is logged, never returned: the record must not fail a build.
        if let Err(e) = result {
            tracing::warn!("activity record in {}: {e}", self.dir.display());
        }
    }

    /// Appends a line (an action's current state, or the traffic totals) to its invocation's
    /// file (the header first, for a new file).
    fn append(&mut self, id: &str, started_micros: u64, line: &[u8]) -> std::io::Result<()> {
        if !matches!(&self.open, Some((open, _)) if open == id) {
            self.open = None;
            let path = self.dir.join(file_name(id));
            let fresh = !path.exists();
            let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
            if fresh {
                let header = Header {
                    invocation: id.to_string(),
                    started: started_micros / 1_000_000,
                    started_micros,
                };
                writeln!(file, "{}", serde_json::to_string(&header)?)?;
            }
            self.open = Some((id.to_string(), file));
        }
        let (_, file) = self.open.as_mut().expect("opened above");
        file.write_all(line)
    }
}

/// A file name for an invocation id: UUIDs as they are, anything else hashed.
fn file_name(id: &str) -> String {
    let safe = !id.is_empty()
        && id.len() <= 100
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    match safe {
        true => format!("{id}.jsonl"),
        false => {
            let digest = clientd_digest::DigestFunction::Sha256.digest_of(id.as_bytes());
            format!("{}.jsonl", &digest.hash_hex()[..32])
        }
    }
}
