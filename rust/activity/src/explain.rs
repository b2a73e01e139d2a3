//! Why actions missed the cache: for each action of an invocation that was not a hit, the most
//! recent earlier action of the same target and mnemonic with the same outputs, and what differs
//! between the two: arguments, environment variables, platform properties, input files (where
//! both input trees are in the CAS; a cache-only build uploads no input tree), the Action's own
//! fields. Actions with the same differences are grouped, largest group first.

use crate::log::{ActionRecord, Invocation, Traffic};
use clientd_digest::{Digest, DigestFunction, InstanceName};
use clientd_proto::build::bazel::remote::execution::v2 as re;
use clientd_store::{read_tree, BlobStore};
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Input-file differences listed per action before the rest are counted.
const MAX_LISTED_INPUTS: usize = 5;
/// Arguments longer than this are shortened in descriptions.
const MAX_SHOWN: usize = 120;

/// Actions that missed for the same reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// Each reason, e.g. "environment variable FOO: 1 -> 2".
    pub reasons: Vec<String>,
    /// `target (mnemonic)` of each action.
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub invocation: String,
    pub actions: usize,
    pub hits: usize,
    pub misses: usize,
    /// Largest group first.
    pub causes: Vec<Cause>,
    pub traffic: Traffic,
}

/// A record's action digest (`<function>/<hash>/<size>`).
pub fn parse_action(record: &ActionRecord) -> Option<Digest> {
    let (function, rest) = record.action.split_once('/')?;
    let function = DigestFunction::from_name(function)?;
    Digest::parse_joined(Some(function), rest, '/').ok()
}

/// The instance name a record was made under; None if the log's text is not one.
pub fn parse_instance(record: &ActionRecord) -> Option<InstanceName> {
    InstanceName::new(&record.instance).ok()
}

/// An action's Action and Command, as far as the CAS has them.
pub struct Loaded {
    pub action: re::Action,
    pub command: re::Command,
}

/// A record's Action and Command from the CAS of its instance; None when either is not there.
pub async fn load(store: &dyn BlobStore, record: &ActionRecord) -> Option<Loaded> {
    let (instance, digest) = (parse_instance(record)?, parse_action(record)?);
    let action = re::Action::decode(store.read_bytes(&instance, &digest).await.ok()?).ok()?;
    let command_digest =
        Digest::from_proto(Some(digest.function()), action.command_digest.as_ref()?).ok()?;
    let command =
        re::Command::decode(store.read_bytes(&instance, &command_digest).await.ok()?).ok()?;
    Some(Loaded { action, command })
}

// Bazel before 6 fills the deprecated output_files/output_directories and Command.platform.
#[allow(deprecated)]
fn outputs(command: &re::Command) -> Vec<String> {
    let mut outputs: Vec<String> = command
        .output_paths
        .iter()
        .chain(&command.output_files)
        .chain(&command.output_directories)
        .cloned()
        .collect();
    outputs.sort();
    outputs.dedup();
    outputs
}

fn shown(text: &str) -> String {
    match text.char_indices().nth(MAX_SHOWN) {
        Some((cut, _)) => format!("`{}...`", &text[..cut]),
        None => format!("`{text}`"),
    }
}

fn short(digest: &Digest) -> String {
    format!("{}.../{}", &digest.hash_hex()[..8], digest.size())
}

/// Differences between two maps of name -> value, in words.
fn map_diff(
    what: &str,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut reasons = Vec::new();
    for (name, value) in new {
        match old.get(name) {
            None => reasons.push(format!("{what} {name}={} added", shown(value))),
            Some(before) if before != value => reasons.push(format!(
                "{what} {name}: {} -> {}",
                shown(before),
                shown(value)
            )),
            _ => {}
        }
    }
    for (name, value) in old {
        if !new.contains_key(name) {
            reasons.push(format!("{what} {name}={} removed", shown(value)));
        }
    }
    reasons
}

fn arguments_diff(old: &[String], new: &[String]) -> Vec<String> {
    if old == new {
        return vec![];
    }
    if old.len() == new.len() {
        return old
            .iter()
            .zip(new)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| format!("argument {i}: {} -> {}", shown(a), shown(b)))
            .collect();
    }
    let mut reasons = Vec::new();
    for arg in new.iter().filter(|a| !old.contains(a)) {
        reasons.push(format!("argument {} added", shown(arg)));
    }
    for arg in old.iter().filter(|a| !new.contains(a)) {
        reasons.push(format!("argument {} removed", shown(arg)));
    }
    if reasons.is_empty() {
        reasons.push("the arguments were reordered".into());
    }
    reasons
}

fn environment(command: &re::Command) -> BTreeMap<String, String> {
    command
        .environment_variables
        .iter()
        .map(|v| (v.name.clone(), v.value.clone()))
        .collect()
}

fn platform(platform: Option<&re::Platform>) -> BTreeMap<String, String> {
    platform
        .map(|p| {
            p.properties
                .iter()
                .map(|p| (p.name.clone(), p.value.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Every file and symlink of the tree under `root`: path -> (what it is, its digest for files).
/// None when the tree is not (wholly) in the CAS.
pub async fn flatten(
    store: &dyn BlobStore,
    instance: &InstanceName,
    root: &Digest,
) -> Option<BTreeMap<String, (String, Option<Digest>)>> {
    let tree = read_tree(store, instance, root).await.ok()?;
    let mut entries = BTreeMap::new();
    let mut stack = vec![(String::new(), *root)];
    while let Some((path, digest)) = stack.pop() {
        let directory = tree.get(&digest)?;
        let join = |name: &str| match path.as_str() {
            "" => name.to_string(),
            _ => format!("{path}/{name}"),
        };
        for file in &directory.files {
            let d = Digest::from_proto(Some(root.function()), file.digest.as_ref()?).ok()?;
            let what = match file.is_executable {
                true => format!("{} (executable)", short(&d)),
                false => short(&d),
            };
            entries.insert(join(&file.name), (what, Some(d)));
        }
        for link in &directory.symlinks {
            entries.insert(join(&link.name), (format!("-> {}", link.target), None));
        }
        for child in &directory.directories {
            let d = Digest::from_proto(Some(root.function()), child.digest.as_ref()?).ok()?;
            stack.push((join(&child.name), d));
        }
    }
    Some(entries)
}

async fn inputs_diff(
    store: &dyn BlobStore,
    old: (&ActionRecord, &re::Action),
    new: (&ActionRecord, &re::Action),
) -> Vec<String> {
    if old.1.input_root_digest == new.1.input_root_digest {
        return vec![];
    }
    let root = |record: &ActionRecord, action: &re::Action| {
        let function = parse_action(record)?.function();
        Digest::from_proto(Some(function), action.input_root_digest.as_ref()?).ok()
    };
    let (Some(old_root), Some(new_root)) = (root(old.0, old.1), root(new.0, new.1)) else {
        return vec!["the input files changed (an input root digest is malformed)".into()];
    };
    let (Some(old_instance), Some(new_instance)) = (parse_instance(old.0), parse_instance(new.0))
    else {
        return vec!["the input files changed (an instance name is malformed)".into()];
    };
    let trees = (
        flatten(store, &old_instance, &old_root).await,
        flatten(store, &new_instance, &new_root).await,
    );
    let (Some(before), Some(after)) = trees else {
        return vec![
            "the input files changed; which ones is not known: an input tree is not in \
                     the CAS (Bazel uploads none for a cache-only build)"
                .into(),
        ];
    };
    let mut reasons = Vec::new();
    for (path, (what, _)) in &after {
        match before.get(path) {
            None => reasons.push(format!("input {path} added")),
            Some((was, _)) if was != what => reasons.push(format!("input {path}: {was} -> {what}")),
            _ => {}
        }
    }
    for path in before.keys().filter(|p| !after.contains_key(*p)) {
        reasons.push(format!("input {path} removed"));
    }
    if reasons.len() > MAX_LISTED_INPUTS {
        let more = reasons.len() - MAX_LISTED_INPUTS;
        reasons.truncate(MAX_LISTED_INPUTS);
        reasons.push(format!("and {more} more input files"));
    }
    reasons
}

/// What differs between an earlier action and a later one of the same target and mnemonic.
#[allow(deprecated)] // Command.platform: see `outputs`
async fn differences(
    store: &dyn BlobStore,
    old: (&ActionRecord, &Loaded),
    new: (&ActionRecord, &Loaded),
) -> Vec<String> {
    let (a, b) = (&old.1.command, &new.1.command);
    let mut reasons = arguments_diff(&a.arguments, &b.arguments);
    reasons.extend(map_diff(
        "environment variable",
        &environment(a),
        &environment(b),
    ));
    let platforms = (
        platform(a.platform.as_ref().or(old.1.action.platform.as_ref())),
        platform(b.platform.as_ref().or(new.1.action.platform.as_ref())),
    );
    reasons.extend(map_diff("platform property", &platforms.0, &platforms.1));
    if a.working_directory != b.working_directory {
        reasons.push(format!(
            "working directory {} -> {}",
            shown(&a.working_directory),
            shown(&b.working_directory)
        ));
    }
    reasons.extend(inputs_diff(store, (old.0, &old.1.action), (new.0, &new.1.action)).await);
    let (x, y) = (&old.1.action, &new.1.action);
    if x.timeout != y.timeout {
        reasons.push("the action's timeout changed".into());
    }
    if x.salt != y.salt {
        reasons.push("the action's salt changed".into());
    }
    if reasons.is_empty() {
        reasons.push("the Action differs in a field clientd does not compare".into());
    }
    reasons
}

/// What an explanation was asked for that the activity record does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    #[error("no invocation {0:?} in the activity record")]
    NoInvocation(String),
    #[error("the activity record is empty: no build has gone through this daemon yet")]
    EmptyRecord,
    #[error("no action {action} in invocation {invocation}")]
    NoAction { invocation: String, action: String },
}

/// Where invocation `id` (the most recent one when None) is in the record.
fn position(invocations: &[Arc<Invocation>], id: Option<&str>) -> Result<usize, ExplainError> {
    match id {
        Some(id) => invocations
            .iter()
            .position(|i| i.id == id)
            .ok_or_else(|| ExplainError::NoInvocation(id.to_string())),
        None => invocations
            .len()
            .checked_sub(1)
            .ok_or(ExplainError::EmptyRecord),
    }
}

type Earlier<'a> = HashMap<(&'a str, &'a str), Vec<&'a ActionRecord>>;

/// The actions up to invocation `position`, by (target, mnemonic), newest first.
fn earlier(invocations: &[Arc<Invocation>], position: usize) -> Earlier<'_> {
    let mut earlier: Earlier = HashMap::new();
    for record in invocations[..=position]
        .iter()
        .flat_map(|i| i.actions.iter())
        .rev()
    {
        earlier
            .entry((record.target.as_str(), record.mnemonic.as_str()))
            .or_default()
            .push(record);
    }
    earlier
}

/// Why one action of invocation `id` missed: its reasons (empty for a hit).
pub async fn explain_action(
    invocations: &[Arc<Invocation>],
    id: &str,
    action: &str,
    store: &dyn BlobStore,
) -> Result<Vec<String>, ExplainError> {
    let position = position(invocations, Some(id))?;
    let record = invocations[position]
        .actions
        .iter()
        .find(|a| a.action == action)
        .ok_or_else(|| ExplainError::NoAction {
            invocation: id.to_string(),
            action: action.to_string(),
        })?;
    if record.outcome.is_hit() {
        return Ok(vec![]);
    }
    let earlier = earlier(invocations, position);
    Ok(explain_one(record, &earlier, &mut HashMap::new(), store).await)
}

/// The explanation of invocation `id` (the most recent one when None), from the record's
/// invocations (oldest first) and the CAS.
pub async fn explain(
    invocations: &[Arc<Invocation>],
    id: Option<&str>,
    store: &dyn BlobStore,
) -> Result<Explanation, ExplainError> {
    let position = position(invocations, id)?;
    let invocation = &invocations[position];
    let earlier = earlier(invocations, position);
    let mut groups: BTreeMap<Vec<String>, Vec<String>> = BTreeMap::new();
    let mut cache: HashMap<String, Option<Loaded>> = HashMap::new();
    let mut misses = 0;
    for record in invocation.actions.iter().filter(|a| !a.outcome.is_hit()) {
        misses += 1;
        let reasons = explain_one(record, &earlier, &mut cache, store).await;
        groups
            .entry(reasons)
            .or_default()
            .push(format!("{} ({})", record.target, record.mnemonic));
    }
    let mut causes: Vec<Cause> = groups
        .into_iter()
        .map(|(reasons, actions)| Cause { reasons, actions })
        .collect();
    causes.sort_by_key(|c| std::cmp::Reverse(c.actions.len()));
    Ok(Explanation {
        invocation: invocation.id.clone(),
        actions: invocation.actions.len(),
        hits: invocation.hits(),
        misses,
        causes,
        traffic: invocation.traffic,
    })
}

async fn explain_one(
    record: &ActionRecord,
    earlier: &Earlier<'_>,
    cache: &mut HashMap<String, Option<Loaded>>,
    store: &dyn BlobStore,
) -> Vec<String> {
    if !cache.contains_key(&record.action) {
        cache.insert(record.action.clone(), load(store, record).await);
    }
    if cache[&record.action].is_none() {
        return vec!["its Action or Command is not in the CAS, so nothing can be compared".into()];
    }
    let key = (record.target.as_str(), record.mnemonic.as_str());
    let candidates = earlier.get(&key).map(Vec::as_slice).unwrap_or_default();
    for candidate in candidates.iter().filter(|c| c.action != record.action) {
        if !cache.contains_key(&candidate.action) {
            cache.insert(candidate.action.clone(), load(store, candidate).await);
        }
        let (Some(new), Some(old)) = (&cache[&record.action], &cache[&candidate.action]) else {
            continue;
        };
        if outputs(&old.command) == outputs(&new.command) {
            return differences(store, (candidate, old), (record, new)).await;
        }
    }
    vec![format!(
        "no earlier action of {} with mnemonic {} and the same outputs (a new target, or the \
         first build clientd saw)",
        record.target, record.mnemonic
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_record_lacks_is_named() {
        assert_eq!(position(&[], None), Err(ExplainError::EmptyRecord));
        let mut one = Invocation::default();
        one.id = "first".into();
        let record = [Arc::new(one)];
        assert_eq!(position(&record, None), Ok(0));
        assert_eq!(position(&record, Some("first")), Ok(0));
        let missing = position(&record, Some("other")).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "no invocation \"other\" in the activity record"
        );
    }
}
