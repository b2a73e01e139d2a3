//! Bazel versions, as `bazel --version` prints them.

use std::fmt;

/// Text that is not a Bazel version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a Bazel version (expected e.g. 7.2.1)")]
pub struct VersionError(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BazelVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl BazelVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        BazelVersion {
            major,
            minor,
            patch,
        }
    }

    /// Parses `7.2.1`, `bazel 7.2.1`, `bazel 8.0.0rc2` or `release 6.5.0` (Bazel's own spellings).
    pub fn parse(text: &str) -> Result<Self, VersionError> {
        let not_a_version = || VersionError(text.to_string());
        let word = text
            .split_whitespace()
            .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))
            .ok_or_else(not_a_version)?;
        let mut numbers = word.split('.').map(|part| {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>()
        });
        let mut next = || numbers.next().transpose().ok().flatten();
        let major = next().ok_or_else(not_a_version)?;
        Ok(BazelVersion::new(
            major,
            next().unwrap_or(0),
            next().unwrap_or(0),
        ))
    }

    pub fn at_least(self, major: u32, minor: u32) -> bool {
        self >= BazelVersion::new(major, minor, 0)
    }
}

impl fmt::Display for BazelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_bazel_prints() {
        assert_eq!(
            BazelVersion::parse("bazel 7.2.1").unwrap(),
            BazelVersion::new(7, 2, 1)
        );
        assert_eq!(
            BazelVersion::parse("4.2.3- (@non-git)").unwrap(),
            BazelVersion::new(4, 2, 3)
        );
        assert_eq!(
            BazelVersion::parse("bazel 8.0.0rc2").unwrap(),
            BazelVersion::new(8, 0, 0)
        );
        assert_eq!(
            BazelVersion::parse("7").unwrap(),
            BazelVersion::new(7, 0, 0)
        );
        assert!(BazelVersion::parse("bazel no-version").is_err());
        assert!(BazelVersion::new(7, 2, 0).at_least(7, 2));
        assert!(!BazelVersion::new(7, 1, 9).at_least(7, 2));
    }
}
