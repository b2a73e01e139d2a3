//! The activity record: per invocation (Bazel's `tool_invocation_id`), per action, what happened.
//! Bounded to the last `max_invocations` invocations, kept across restarts as one JSON-lines file
//! per invocation (each line an action's latest state; the last line for an action wins), and
//! with no blob contents in it: digests, labels, mnemonics, outcomes, times and sizes.

use crate::writer::{Header, Writer};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// What happened to an action, as clientd saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// GetActionResult answered from the local cache (`local/...` instances).
    LocalHit,
    /// GetActionResult answered with a cluster's result.
    ClusterHit,
    /// GetActionResult found nothing; what follows (if anything) replaces this.
    Miss,
    /// Execute answered from a cache (the cluster's, or clientd's scrubbed key).
    ExecuteCacheHit,
    /// Executed on the cluster, successfully.
    ExecutedRemotely,
    /// Executed by Bazel, and the result uploaded (UpdateActionResult).
    Uploaded,
    /// Executed on the cluster, and it failed (non-zero exit or an error).
    Failed,
}

impl Outcome {
    pub fn is_hit(self) -> bool {
        matches!(
            self,
            Outcome::LocalHit | Outcome::ClusterHit | Outcome::ExecuteCacheHit
        )
    }
}

/// One action of an invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRecord {
    /// `<function>/<hash>/<size>`, e.g. `sha256/ab12.../142`.
    pub action: String,
    /// The full instance name the calls used (where the Action and its blobs are).
    pub instance: String,
    pub target: String,
    pub mnemonic: String,
    pub outcome: Outcome,
    /// Time clientd spent on the calls about this action, in microseconds.
    pub micros: u64,
    /// Bytes of the outputs of its result, when there was one.
    pub output_bytes: u64,
    /// When it was first seen (seconds since the epoch).
    pub at: u64,
}

/// Bytes an invocation read through clientd (BatchReadBlobs and ByteStream.Read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// Bytes served to the client.
    pub served: u64,
    /// Bytes fetched from clusters to serve them (the rest came from the local CAS).
    pub fetched: u64,
}

impl Traffic {
    /// Bytes served from the local CAS without a fetch.
    pub fn local(&self) -> u64 {
        self.served.saturating_sub(self.fetched)
    }
}

/// The line that keeps an invocation's [`Traffic`] totals (the last one wins).
#[derive(Serialize, Deserialize)]
struct TrafficLine {
    traffic: Traffic,
}

/// An invocation's actions, in the order they were first seen.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    pub id: String,
    /// When it was first seen, in microseconds since the epoch: what orders invocations (builds
    /// a second apart are common).
    started_micros: u64,
    pub actions: Vec<ActionRecord>,
    pub traffic: Traffic,
    index: HashMap<String, usize>,
}

impl Invocation {
    fn new(id: &str, started_micros: u64) -> Self {
        Invocation {
            id: id.to_string(),
            started_micros,
            ..Default::default()
        }
    }

    /// Adds a record, or replaces the action's earlier one (keeping when it was first seen and
    /// adding up the time spent).
    fn apply(&mut self, mut record: ActionRecord) {
        match self.index.get(&record.action) {
            Some(&i) => {
                let old = &self.actions[i];
                record.at = old.at;
                record.micros += old.micros;
                if record.output_bytes == 0 {
                    record.output_bytes = old.output_bytes;
                }
                self.actions[i] = record;
            }
            None => {
                self.index.insert(record.action.clone(), self.actions.len());
                self.actions.push(record);
            }
        }
    }

    /// When it was first seen (seconds since the epoch).
    pub fn started(&self) -> u64 {
        self.started_micros / 1_000_000
    }

    pub fn hits(&self) -> usize {
        self.actions.iter().filter(|a| a.outcome.is_hit()).count()
    }
}

/// What one call tells about an action.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub invocation: &'a str,
    pub instance: &'a str,
    pub action: String,
    pub target: &'a str,
    pub mnemonic: &'a str,
    pub outcome: Outcome,
    pub micros: u64,
    pub output_bytes: u64,
}

/// The record in memory, and its files (written in order by a thread of their own).
pub struct ActivityLog {
    max_invocations: usize,
    /// Oldest first. Shared with readers (the pages, `clientd explain`): an invocation being
    /// read while the build records into it is copied then, not on every read.
    invocations: Mutex<VecDeque<Arc<Invocation>>>,
    writer: Writer,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn load(path: &Path) -> Option<Invocation> {
    let mut lines = BufReader::new(File::open(path).ok()?).lines();
    let header: Header = serde_json::from_str(&lines.next()?.ok()?).ok()?;
    let micros = match header.started_micros {
        0 => header.started * 1_000_000,
        micros => micros,
    };
    let mut invocation = Invocation::new(&header.invocation, micros);
    for line in lines.map_while(Result::ok) {
        // A torn last line (a crash mid-write) is skipped.
        if let Ok(record) = serde_json::from_str::<ActionRecord>(&line) {
            let i = invocation.index.get(&record.action).copied();
            match i {
                Some(i) => invocation.actions[i] = record,
                None => invocation.apply(record),
            }
        } else if let Ok(line) = serde_json::from_str::<TrafficLine>(&line) {
            invocation.traffic = line.traffic;
        }
    }
    Some(invocation)
}

impl ActivityLog {
    /// Opens (creating) the record in `dir`, loading the invocations kept there.
    pub fn open(dir: &Path, max_invocations: usize) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut invocations: Vec<Invocation> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
            .filter_map(|e| load(&e.path()))
            .collect();
        invocations.sort_by_key(|i| i.started_micros);
        let log = ActivityLog {
            max_invocations: max_invocations.max(1),
            invocations: Mutex::new(invocations.into_iter().map(Arc::new).collect()),
            writer: Writer::start(dir.to_path_buf())?,
        };
        log.evict(&mut log.invocations.lock().unwrap());
        Ok(log)
    }

    fn evict(&self, invocations: &mut VecDeque<Arc<Invocation>>) {
        while invocations.len() > self.max_invocations {
            if let Some(old) = invocations.pop_front() {
                self.writer.remove(&old.id);
            }
        }
    }

    /// Records what a call told about an action. Failures to write are logged, never returned:
    /// the record must not fail a build.
    pub fn record(&self, event: Event<'_>) {
        if event.invocation.is_empty() {
            return; // a client without RequestMetadata: nothing to group it by
        }
        let key = event.action.clone();
        let record = ActionRecord {
            action: event.action,
            instance: event.instance.to_string(),
            target: event.target.to_string(),
            mnemonic: event.mnemonic.to_string(),
            outcome: event.outcome,
            micros: event.micros,
            output_bytes: event.output_bytes,
            at: now(),
        };
        let mut invocations = self.invocations.lock().unwrap();
        let invocation = self.invocation(&mut invocations, event.invocation);
        invocation.apply(record);
        let line = line(&invocation.actions[invocation.index[&key]]);
        // Sent under the lock, so that an action's lines reach the file in the order applied.
        self.writer
            .append(event.invocation, invocation.started_micros, line);
    }

    /// Adds a read's bytes to its invocation's [`Traffic`] (reads without an invocation are not
    /// recorded).
    pub fn traffic(&self, invocation: &str, served: u64, fetched: u64) {
        if invocation.is_empty() || served == 0 {
            return;
        }
        let mut invocations = self.invocations.lock().unwrap();
        let record = self.invocation(&mut invocations, invocation);
        record.traffic.served += served;
        record.traffic.fetched += fetched;
        let totals = line(&TrafficLine {
            traffic: record.traffic,
        });
        self.writer
            .append(invocation, record.started_micros, totals);
    }

    /// The invocation `id`, added (evicting the oldest beyond the bound) when it is new.
    fn invocation<'a>(
        &self,
        invocations: &'a mut VecDeque<Arc<Invocation>>,
        id: &str,
    ) -> &'a mut Invocation {
        if !invocations.iter().any(|i| i.id == id) {
            invocations.push_back(Arc::new(Invocation::new(id, now_micros())));
            self.evict(invocations);
        }
        let invocation = invocations
            .iter_mut()
            .find(|i| i.id == id)
            .expect("present");
        Arc::make_mut(invocation)
    }

    /// The invocations kept, oldest first.
    pub fn invocations(&self) -> Vec<Arc<Invocation>> {
        self.invocations.lock().unwrap().iter().cloned().collect()
    }

    /// Waits until every line recorded so far is in its file: the daemon does before it exits.
    pub fn flush(&self) {
        self.writer.flush();
    }
}

/// A JSON line of the record's file.
fn line(record: &impl Serialize) -> Vec<u8> {
    let mut line = serde_json::to_vec(record).expect("records serialize");
    line.push(b'\n');
    line
}

/// How a record names an action: `<function>/<hash>/<size>`.
pub fn action_key(digest: &clientd_digest::Digest) -> String {
    format!(
        "{}/{}/{}",
        digest.function().name(),
        digest.hash_hex(),
        digest.size()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn event<'a>(invocation: &'a str, action: &str, outcome: Outcome) -> Event<'a> {
        Event {
            invocation,
            instance: "local/x",
            action: action.to_string(),
            target: "//a:b",
            mnemonic: "Genrule",
            outcome,
            micros: 10,
            output_bytes: 0,
        }
    }

    #[test]
    fn later_events_update_an_action_and_the_record_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let log = ActivityLog::open(dir.path(), 5).unwrap();
        log.record(event("inv-1", "sha256/aa/1", Outcome::Miss));
        log.record(event("inv-1", "sha256/bb/1", Outcome::LocalHit));
        log.record(event("inv-1", "sha256/aa/1", Outcome::Uploaded));
        log.record(event("", "sha256/cc/1", Outcome::Miss)); // no invocation: not recorded
        let check = |log: &ActivityLog| {
            let invocations = log.invocations();
            assert_eq!(invocations.len(), 1);
            let actions = &invocations[0].actions;
            assert_eq!(actions.len(), 2);
            assert_eq!(actions[0].outcome, Outcome::Uploaded);
            assert_eq!(invocations[0].hits(), 1);
            let traffic = invocations[0].traffic;
            assert_eq!(
                (traffic.served, traffic.fetched, traffic.local()),
                (110, 40, 70)
            );
        };
        log.traffic("inv-1", 100, 40);
        log.traffic("inv-1", 10, 0);
        log.traffic("", 10, 0); // no invocation: not recorded
        check(&log);
        assert_eq!(log.invocations()[0].actions[0].micros, 20, "time adds up");
        // Dropped, its writer writes what it was sent, then stops.
        drop(log);
        // A torn last line (a crash mid-write) is skipped.
        let file = dir.path().join("inv-1.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        f.write_all(b"{\"action\":\"sha256/dd").unwrap();
        check(&ActivityLog::open(dir.path(), 5).unwrap());
    }

    #[test]
    fn only_the_last_invocations_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let log = ActivityLog::open(dir.path(), 2).unwrap();
        for id in ["one", "two", "three"] {
            log.record(event(id, "sha256/aa/1", Outcome::Miss));
        }
        let ids = |log: &ActivityLog| -> Vec<String> {
            log.invocations().iter().map(|i| i.id.clone()).collect()
        };
        assert_eq!(ids(&log), ["two", "three"]);
        log.flush();
        // Invocations a second apart or less keep their order across a restart.
        assert_eq!(
            ids(&ActivityLog::open(dir.path(), 2).unwrap()),
            ["two", "three"]
        );
        assert!(!dir.path().join("one.jsonl").exists());
        // Ids that are not file-name safe are hashed into one.
        log.record(event("../../etc/passwd", "sha256/aa/1", Outcome::Miss));
        log.flush();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.contains("..")), "{names:?}");
        assert_eq!(
            ActivityLog::open(dir.path(), 2)
                .unwrap()
                .invocations()
                .len(),
            2
        );
    }
}
