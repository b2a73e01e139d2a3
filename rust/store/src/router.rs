//! Instance-name prefix routing, shared by the stores ([`crate::Demultiplexing`]) and the gRPC
//! services that route calls other than storage (Capabilities, Execution).
//!
//! Prefixes match whole leading components and the longest wins, so `a.example.com/x` routed under
//! prefix `a.example.com` reaches that target as instance `x`.

use crate::error::{StoreError, StoreResult};
use clientd_digest::truncate;

pub struct Router<T> {
    /// Sorted longest prefix first, so the first match is the longest.
    routes: Vec<(String, T)>,
}

impl<T> Router<T> {
    pub fn new(routes: impl IntoIterator<Item = (String, T)>) -> Self {
        let mut routes: Vec<_> = routes.into_iter().collect();
        routes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.split('/').count()));
        Router { routes }
    }

    /// The target for `instance_name` and the instance name it should see.
    pub fn route<'a>(&self, instance_name: &'a str) -> StoreResult<(&T, &'a str)> {
        self.route_with_prefix(instance_name)
            .map(|(_, target, rest)| (target, rest))
    }

    /// Like [`Router::route`], also returning the prefix that matched.
    pub fn route_with_prefix<'a>(
        &self,
        instance_name: &'a str,
    ) -> StoreResult<(&str, &T, &'a str)> {
        for (prefix, target) in &self.routes {
            if let Some(rest) = instance_name.strip_prefix(prefix.as_str()) {
                if rest.is_empty() {
                    return Ok((prefix, target, ""));
                }
                if let Some(rest) = rest.strip_prefix('/') {
                    return Ok((prefix, target, rest));
                }
            }
        }
        let mut known: Vec<String> = self.routes.iter().map(|(p, _)| format!("{p:?}")).collect();
        known.sort();
        Err(StoreError::InvalidArgument(format!(
            "instance name {:?} matches no configured prefix; known prefixes: {} \
             (a local cache is e.g. local/<project>)",
            truncate(instance_name),
            known.join(", ")
        )))
    }

    /// Every prefix and its target, longest prefix first.
    pub fn targets(&self) -> impl Iterator<Item = (&str, &T)> {
        self.routes.iter().map(|(p, t)| (p.as_str(), t))
    }

    /// The target configured for exactly `prefix`.
    pub fn get(&self, prefix: &str) -> Option<&T> {
        self.routes
            .iter()
            .find(|(p, _)| p == prefix)
            .map(|(_, target)| target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_whole_component_prefix_wins_and_is_stripped() {
        let router = Router::new([
            ("a.example.com".to_string(), 1),
            ("a.example.com/deep".to_string(), 2),
            ("local".to_string(), 3),
        ]);
        assert_eq!(router.route("a.example.com/hello").unwrap(), (&1, "hello"));
        assert_eq!(router.route("a.example.com").unwrap(), (&1, ""));
        assert_eq!(router.route("a.example.com/deep/x").unwrap(), (&2, "x"));
        assert_eq!(
            router.route("a.example.com/deeper").unwrap(),
            (&1, "deeper")
        );
        assert_eq!(
            router.route_with_prefix("local/p").unwrap(),
            ("local", &3, "p")
        );
        let err = router.route("localhost/x").err().unwrap().to_string();
        assert!(
            err.contains("\"local\"") && err.contains("\"a.example.com\""),
            "{err}"
        );
    }
}
