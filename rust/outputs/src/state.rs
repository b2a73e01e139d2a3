//! Saving and restoring an output path: `<cache_dir>/outputs/<output base id>/state` (an
//! OutputPathState message, written to a temporary file, synced and renamed into place) next to
//! `files/`, the pool of files Bazel's local actions wrote.

use crate::error::OutputsError;
use clientd_digest::{Digest, DigestFunction, InstanceName};
use clientd_proto::clientd::v1::{output_path_state as pb, OutputPathState};
use clientd_vfs::OutputEntry;
use prost::Message;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// The build an output path was last used for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastBuild {
    pub build_id: String,
    pub instance_name: InstanceName,
    pub function: DigestFunction,
}

/// Writes `entries` as the saved state in `dir`, atomically.
pub fn save(
    dir: &Path,
    last: &LastBuild,
    entries: &[(String, OutputEntry)],
) -> std::io::Result<()> {
    let mut instance_names: Vec<InstanceName> = Vec::new();
    let mut instance_index: HashMap<InstanceName, u32> = HashMap::new();
    let mut index_of = |name: &InstanceName| {
        *instance_index.entry(name.clone()).or_insert_with(|| {
            instance_names.push(name.clone());
            (instance_names.len() - 1) as u32
        })
    };
    let entries: Vec<pb::Entry> = entries
        .iter()
        .map(|(path, entry)| pb::Entry {
            path: path.clone(),
            kind: Some(match entry {
                OutputEntry::Directory => pb::entry::Kind::Directory(pb::Directory {}),
                OutputEntry::CasFile {
                    instance,
                    digest,
                    executable,
                } => pb::entry::Kind::CasFile(pb::CasFile {
                    instance: index_of(instance),
                    digest: Some(digest.to_proto()),
                    executable: *executable,
                }),
                OutputEntry::LocalFile { id, mode, digest } => {
                    pb::entry::Kind::LocalFile(pb::LocalFile {
                        id: *id,
                        mode: u32::from(*mode),
                        digest: digest.map(|d| d.to_proto()),
                    })
                }
                OutputEntry::Symlink(target) => pb::entry::Kind::SymlinkTarget(target.clone()),
            }),
        })
        .collect();
    let state = OutputPathState {
        build_id: last.build_id.clone(),
        instance_name: last.instance_name.to_string(),
        digest_function: last.function.to_proto(),
        entries,
        instance_names: instance_names.iter().map(|n| n.to_string()).collect(),
    };
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    temp.write_all(&state.encode_to_vec())?;
    temp.as_file().sync_all()?;
    temp.persist(dir.join("state")).map_err(|e| e.error)?;
    Ok(())
}

/// Reads the saved state in `dir`: the last build and the entries, parents first.
pub fn load(dir: &Path) -> Result<(LastBuild, Vec<(String, OutputEntry)>), OutputsError> {
    let path = dir.join("state");
    let bytes = std::fs::read(&path).map_err(OutputsError::io("read", &path))?;
    let state = OutputPathState::decode(&bytes[..]).map_err(|source| OutputsError::Decode {
        path: path.clone(),
        source,
    })?;
    let function = DigestFunction::from_proto(state.digest_function)
        .map_err(|source| OutputsError::Function {
            path: path.clone(),
            source,
        })?
        .unwrap_or(DigestFunction::Sha256);
    let instance_name = InstanceName::new(&state.instance_name)
        .map_err(|source| OutputsError::InstanceName { path, source })?;
    // A name that does not check out drops its entries, as a malformed digest does.
    let names: Vec<Option<InstanceName>> = state
        .instance_names
        .iter()
        .map(|n| InstanceName::new(n).ok())
        .collect();
    let digest = |d: Option<&clientd_proto::build::bazel::remote::execution::v2::Digest>| {
        d.and_then(|d| Digest::from_proto(Some(function), d).ok())
    };
    let entries = state
        .entries
        .iter()
        .filter_map(|entry| {
            let kind = match entry.kind.as_ref()? {
                pb::entry::Kind::Directory(_) => OutputEntry::Directory,
                pb::entry::Kind::CasFile(file) => OutputEntry::CasFile {
                    instance: names.get(file.instance as usize)?.clone()?,
                    digest: digest(file.digest.as_ref())?,
                    executable: file.executable,
                },
                pb::entry::Kind::LocalFile(file) => OutputEntry::LocalFile {
                    id: file.id,
                    mode: (file.mode & 0o7777) as u16,
                    digest: digest(file.digest.as_ref()),
                },
                pb::entry::Kind::SymlinkTarget(target) => OutputEntry::Symlink(target.clone()),
            };
            Some((entry.path.clone(), kind))
        })
        .collect();
    let last = LastBuild {
        build_id: state.build_id,
        instance_name,
        function,
    };
    Ok((last, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_state_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let digest = DigestFunction::Sha256.digest_of(b"x");
        let last = LastBuild {
            build_id: "b1".into(),
            instance_name: "local/x".parse().unwrap(),
            function: DigestFunction::Sha256,
        };
        let entries = vec![
            ("k8".to_string(), OutputEntry::Directory),
            (
                "k8/a".to_string(),
                OutputEntry::CasFile {
                    instance: "local/x".parse().unwrap(),
                    digest,
                    executable: true,
                },
            ),
            (
                "k8/b".to_string(),
                OutputEntry::LocalFile {
                    id: 7,
                    mode: 0o640,
                    digest: Some(digest),
                },
            ),
            ("k8/c".to_string(), OutputEntry::Symlink("a".into())),
        ];
        save(dir.path(), &last, &entries).unwrap();
        assert_eq!(load(dir.path()).unwrap(), (last, entries));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary files left"
        );
    }
}
