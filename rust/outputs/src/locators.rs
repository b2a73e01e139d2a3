//! The rev2 locators carried in `google.protobuf.Any`.

use clientd_digest::{truncate, Digest, DigestFunction};
use clientd_proto::bazel_output_service_rev2 as rev2;
use prost::Message;
use prost_types::Any;

const PREFIX: &str = "type.googleapis.com/bazel_output_service_rev2.";

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
    what: &str,
) -> Result<Digest, String> {
    let d = field.ok_or_else(|| format!("{what} is missing"))?;
    Digest::from_proto(Some(function), d).map_err(|e| format!("{what}: {e}"))
}

impl Locator {
    pub fn decode(any: &Any, function: DigestFunction) -> Result<Locator, String> {
        match type_name(any) {
            Some("FileArtifactLocator") => {
                let locator = rev2::FileArtifactLocator::decode(&any.value[..])
                    .map_err(|e| format!("malformed FileArtifactLocator: {e}"))?;
                Ok(Locator::File(digest(
                    function,
                    locator.digest.as_ref(),
                    "digest",
                )?))
            }
            Some("TreeArtifactLocator") => {
                let locator = rev2::TreeArtifactLocator::decode(&any.value[..])
                    .map_err(|e| format!("malformed TreeArtifactLocator: {e}"))?;
                let root = match &locator.root_directory_digest {
                    Some(d) => Some(digest(function, Some(d), "root_directory_digest")?),
                    None => None,
                };
                Ok(Locator::Tree {
                    tree: digest(function, locator.tree_digest.as_ref(), "tree_digest")?,
                    root,
                })
            }
            _ => Err(format!(
                "unknown locator type {:?}",
                truncate(&any.type_url)
            )),
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
pub fn start_build_args(any: Option<&Any>) -> Result<rev2::StartBuildArgs, String> {
    let any = any.ok_or("args is missing: expected a bazel_output_service_rev2.StartBuildArgs")?;
    if type_name(any) != Some("StartBuildArgs") {
        return Err(format!(
            "args has type {:?}, expected {PREFIX}StartBuildArgs",
            truncate(&any.type_url)
        ));
    }
    rev2::StartBuildArgs::decode(&any.value[..])
        .map_err(|e| format!("malformed StartBuildArgs: {e}"))
}
