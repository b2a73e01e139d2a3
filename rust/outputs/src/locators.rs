//! The rev2 locators carried in `google.protobuf.Any`.

use clientd_digest::{truncate, Digest, DigestError, DigestFunction};
use clientd_proto::bazel_output_service_rev2 as rev2;
use prost::Message;
use prost_types::Any;

const PREFIX: &str = "type.googleapis.com/bazel_output_service_rev2.";

/// Why a locator or StartBuild's `args` cannot be used (INVALID_ARGUMENT).
#[derive(Debug, thiserror::Error)]
pub enum LocatorError {
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("{field}: {source}")]
    Digest {
        field: &'static str,
        #[source]
        source: DigestError,
    },
    #[error("malformed {message}: {source}")]
    Malformed {
        message: &'static str,
        #[source]
        source: prost::DecodeError,
    },
    #[error("unknown locator type {0:?}")]
    UnknownType(String),
    #[error("args has type {0:?}, expected {PREFIX}StartBuildArgs")]
    NotStartBuildArgs(String),
}

/// Where a staged artifact's content is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locator {
    File(Digest),
    Tree { tree: Digest, root: Option<Digest> },
}

fn type_name(any: &Any) -> Option<&str> {
    any.type_url.strip_prefix(PREFIX)
}

fn digest(
    function: DigestFunction,
    field: Option<&clientd_proto::build::bazel::remote::execution::v2::Digest>,
    what: &'static str,
) -> Result<Digest, LocatorError> {
    let d = field.ok_or(LocatorError::Missing(what))?;
    Digest::from_proto(Some(function), d).map_err(|source| LocatorError::Digest {
        field: what,
        source,
    })
}

/// A `message` decoded from an Any's bytes.
fn decode<M: Message + Default>(any: &Any, message: &'static str) -> Result<M, LocatorError> {
    M::decode(&any.value[..]).map_err(|source| LocatorError::Malformed { message, source })
}

impl Locator {
    pub fn decode(any: &Any, function: DigestFunction) -> Result<Locator, LocatorError> {
        match type_name(any) {
            Some("FileArtifactLocator") => {
                let locator: rev2::FileArtifactLocator = decode(any, "FileArtifactLocator")?;
                Ok(Locator::File(digest(
                    function,
                    locator.digest.as_ref(),
                    "digest",
                )?))
            }
            Some("TreeArtifactLocator") => {
                let locator: rev2::TreeArtifactLocator = decode(any, "TreeArtifactLocator")?;
                let root = match &locator.root_directory_digest {
                    Some(d) => Some(digest(function, Some(d), "root_directory_digest")?),
                    None => None,
                };
                Ok(Locator::Tree {
                    tree: digest(function, locator.tree_digest.as_ref(), "tree_digest")?,
                    root,
                })
            }
            _ => Err(LocatorError::UnknownType(truncate(&any.type_url))),
        }
    }
}

/// A FileArtifactLocator for BatchStat answers.
pub fn file_locator(digest: &Digest) -> Any {
    Any {
        type_url: format!("{PREFIX}FileArtifactLocator"),
        value: rev2::FileArtifactLocator {
            digest: Some(digest.to_proto()),
        }
        .encode_to_vec(),
    }
}

/// StartBuildArgs from StartBuild's `args`.
pub fn start_build_args(any: Option<&Any>) -> Result<rev2::StartBuildArgs, LocatorError> {
    let any = any.ok_or(LocatorError::Missing(
        "args (a bazel_output_service_rev2.StartBuildArgs)",
    ))?;
    if type_name(any) != Some("StartBuildArgs") {
        return Err(LocatorError::NotStartBuildArgs(truncate(&any.type_url)));
    }
    decode(any, "StartBuildArgs")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_name: &str, value: Vec<u8>) -> Any {
        Any {
            type_url: format!("{PREFIX}{type_name}"),
            value,
        }
    }

    #[test]
    fn a_file_locator_decodes_to_the_digest_it_was_made_from() {
        let digest = DigestFunction::Sha256.digest_of(b"x");
        let locator = Locator::decode(&file_locator(&digest), DigestFunction::Sha256).unwrap();
        assert_eq!(locator, Locator::File(digest));
    }

    #[test]
    fn locators_that_cannot_be_used_say_why() {
        let f = DigestFunction::Sha256;
        let why = |any: &Any| Locator::decode(any, f).unwrap_err().to_string();
        assert_eq!(
            why(&any("Nonsense", vec![])),
            format!("unknown locator type \"{PREFIX}Nonsense\"")
        );
        assert!(why(&any("FileArtifactLocator", vec![0xff]))
            .starts_with("malformed FileArtifactLocator: "));
        assert_eq!(
            why(&any("FileArtifactLocator", vec![])),
            "digest is missing"
        );
        let no_tree = rev2::TreeArtifactLocator::default().encode_to_vec();
        assert_eq!(
            why(&any("TreeArtifactLocator", no_tree)),
            "tree_digest is missing"
        );
        let bad_digest = rev2::FileArtifactLocator {
            digest: Some(clientd_proto::build::bazel::remote::execution::v2::Digest {
                hash: "abc".into(),
                size_bytes: 1,
            }),
        };
        assert!(
            why(&any("FileArtifactLocator", bad_digest.encode_to_vec())).starts_with("digest: ")
        );
    }

    #[test]
    fn start_build_args_must_be_there_and_of_their_type() {
        let missing = start_build_args(None).unwrap_err().to_string();
        assert_eq!(
            missing,
            "args (a bazel_output_service_rev2.StartBuildArgs) is missing"
        );
        let wrong = start_build_args(Some(&any("FileArtifactLocator", vec![]))).unwrap_err();
        assert!(
            matches!(wrong, LocatorError::NotStartBuildArgs(_)),
            "{wrong}"
        );
        let args = rev2::StartBuildArgs {
            instance_name: "local/x".into(),
            ..Default::default()
        };
        let decoded = start_build_args(Some(&any("StartBuildArgs", args.encode_to_vec())));
        assert_eq!(decoded.unwrap().instance_name, "local/x");
    }
}
