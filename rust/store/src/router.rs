//! Instance-name prefix routing, shared by the stores ([`crate::Demultiplexing`]) and the gRPC
//! services that route calls other than storage (Capabilities, Execution).
//!
//! Prefixes match whole leading components and the longest wins, so `a.example.com/x` routed under
//! prefix `a.example.com` reaches that target as instance `x`.

use crate::error::{StoreError, StoreResult};
use clientd_digest::{truncate, InstanceName};

pub struct Router<T> {
    /// Sorted longest prefix first, so the first match is the longest.
    routes: Vec<(InstanceName, T)>,
}

impl<T> Router<T> {
    pub fn new(routes: impl IntoIterator<Item = (InstanceName, T)>) -> Self {
        let mut routes: Vec<_> = routes.into_iter().collect();
        routes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.segments()));
        Router { routes }
    }

    /// The target for `instance_name` and the instance name it should see.
    pub fn route(&self, instance_name: &InstanceName) -> StoreResult<(&T, InstanceName)> {
        self.route_with_prefix(instance_name)
            .map(|(_, target, rest)| (target, rest))
    }

    /// Like [`Router::route`], also returning the prefix that matched.
    pub fn route_with_prefix(
        &self,
        instance_name: &InstanceName,
    ) -> StoreResult<(&InstanceName, &T, InstanceName)> {
        for (prefix, target) in &self.routes {
            if let Some(rest) = instance_name.under(prefix) {
                return Ok((prefix, target, rest));
            }
        }
        let mut known: Vec<String> = self.routes.iter().map(|(p, _)| format!("{p:?}")).collect();
        known.sort();
        Err(StoreError::InvalidArgument(format!(
            "instance name {:?} matches no configured prefix; known prefixes: {} \
             (a local cache is e.g. local/<project>)",
            truncate(instance_name.as_str()),
            known.join(", ")
        )))
    }

    /// Every prefix and its target, longest prefix first.
    pub fn targets(&self) -> impl Iterator<Item = (&InstanceName, &T)> {
        self.routes.iter().map(|(p, t)| (p, t))
    }

    /// The target configured for exactly `prefix`.
    pub fn get(&self, prefix: &InstanceName) -> Option<&T> {
        self.routes
            .iter()
            .find(|(p, _)| p == prefix)
            .map(|(_, target)| target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_store::name;

    #[test]
    fn longest_whole_component_prefix_wins_and_is_stripped() {
        let router = Router::new([
            (name("a.example.com"), 1),
            (name("a.example.com/deep"), 2),
            (name("local"), 3),
        ]);
        assert_eq!(
            router.route(&name("a.example.com/hello")).unwrap(),
            (&1, name("hello"))
        );
        assert_eq!(
            router.route(&name("a.example.com")).unwrap(),
            (&1, name(""))
        );
        assert_eq!(
            router.route(&name("a.example.com/deep/x")).unwrap(),
            (&2, name("x"))
        );
        assert_eq!(
            router.route(&name("a.example.com/deeper")).unwrap(),
            (&1, name("deeper"))
        );
        assert_eq!(
            router.route_with_prefix(&name("local/p")).unwrap(),
            (&name("local"), &3, name("p"))
        );
        let err = router
            .route(&name("localhost/x"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("\"local\"") && err.contains("\"a.example.com\""),
            "{err}"
        );
    }
}
