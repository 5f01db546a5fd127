//! Routing: (identity, client-facing bucket, key or list prefix, operation class) → access point.
//!
//! **Architecture invariant:** routing is pure: no IO, no clock, no locks. Deny by default: a
//! request no rule gives gets `AccessDenied` and nothing is sent upstream.
//!
//! Among the routes of the identity and bucket whose prefix the key (or, for listings, the list
//! prefix) starts with, the longest prefix is the most specific and decides; among routes with that
//! same prefix, the first in file order that allows the operation class wins. So a more specific
//! read-only rule cannot be widened by a broader read-write one.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{AccessChange, RouteConfig};
use crate::s3::{AccessPoint, BucketName, OperationClass};

/// A compiled routing rule.
#[derive(Debug, Clone)]
pub struct Route {
    /// The position of the rule in the configuration (`routes[index]`).
    pub index: usize,
    pub identity: Arc<str>,
    pub bucket: BucketName,
    pub prefix: String,
    pub operations: Vec<OperationClass>,
    pub access_point: Arc<AccessPoint>,
    /// The access changes the route lets through (`allow`).
    pub allow: Vec<AccessChange>,
}

/// What part of the bucket a request touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// An object key.
    Key(&'a str),
    /// A listing confined to a prefix.
    ListPrefix(&'a str),
    /// The bucket itself (HeadBucket, GetBucketLocation): any route for the bucket will do.
    Bucket,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The identity has no route for the bucket.
    NoRouteForBucket,
    /// The identity has routes for the bucket, but none whose prefix covers the key.
    OutsidePrefixes { prefixes: Vec<String> },
    /// The most specific route does not allow the operation class.
    OperationNotAllowed { route: usize, class: OperationClass },
}

impl Denial {
    /// A message for the client: says what is refused without listing other callers' routes.
    pub fn message(&self) -> String {
        match self {
            Self::NoRouteForBucket => "Access Denied: no route gives this caller the bucket.".to_owned(),
            Self::OutsidePrefixes { .. } => {
                "Access Denied: the key or listing prefix is outside the prefixes this caller may use (a listing must give a prefix inside them).".to_owned()
            }
            Self::OperationNotAllowed { class, .. } => {
                format!(
                    "Access Denied: this caller may not perform {} operations here.",
                    class.as_str()
                )
            }
        }
    }
}

/// The routing table.
#[derive(Debug, Default)]
pub struct Router {
    /// Routes per (identity, bucket), longest prefix first, then file order.
    table: HashMap<(Arc<str>, BucketName), Vec<Route>>,
    /// Client-facing buckets per identity, sorted (answers ListBuckets).
    buckets: HashMap<Arc<str>, Vec<BucketName>>,
}

impl Router {
    pub fn new(routes: &[RouteConfig]) -> Self {
        let mut table: HashMap<(Arc<str>, BucketName), Vec<Route>> = HashMap::new();
        let mut buckets: HashMap<Arc<str>, Vec<BucketName>> = HashMap::new();
        for (index, r) in routes.iter().enumerate() {
            let identity: Arc<str> = Arc::from(r.identity.as_str());
            let route = Route {
                index,
                identity: identity.clone(),
                bucket: r.bucket.clone(),
                prefix: r.prefix.clone(),
                operations: r.operations.clone(),
                access_point: Arc::new(r.access_point.clone()),
                allow: r.allow.clone(),
            };
            table
                .entry((identity.clone(), r.bucket.clone()))
                .or_default()
                .push(route);
            let list = buckets.entry(identity).or_default();
            if !list.contains(&r.bucket) {
                list.push(r.bucket.clone());
            }
        }
        for routes in table.values_mut() {
            // Stable: equal prefix lengths keep file order.
            routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        }
        for list in buckets.values_mut() {
            list.sort();
        }
        Self { table, buckets }
    }

    /// Finds the route for a request.
    pub fn route(
        &self,
        identity: &str,
        bucket: &BucketName,
        scope: Scope<'_>,
        class: OperationClass,
    ) -> Result<&Route, Denial> {
        let key: (Arc<str>, BucketName) = (Arc::from(identity), bucket.clone());
        let routes = self.table.get(&key).ok_or(Denial::NoRouteForBucket)?;
        let covering = |r: &&Route| match scope {
            Scope::Key(k) | Scope::ListPrefix(k) => k.starts_with(r.prefix.as_str()),
            Scope::Bucket => true,
        };
        let Some(best) = routes.iter().find(covering) else {
            return Err(Denial::OutsidePrefixes {
                prefixes: routes.iter().map(|r| r.prefix.clone()).collect(),
            });
        };
        let same_prefix = routes
            .iter()
            .filter(covering)
            .filter(|r| r.prefix.len() == best.prefix.len() || matches!(scope, Scope::Bucket));
        same_prefix
            .clone()
            .find(|r| r.operations.contains(&class))
            .ok_or(Denial::OperationNotAllowed {
                route: best.index,
                class,
            })
    }

    /// The client-facing buckets an identity may use.
    pub fn buckets_of(&self, identity: &str) -> &[BucketName] {
        self.buckets.get(identity).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OperationClass::{Delete, List, Read, Write};

    fn route(identity: &str, bucket: &str, prefix: &str, ops: &[OperationClass], ap: &str) -> RouteConfig {
        RouteConfig {
            identity: identity.into(),
            bucket: BucketName::parse(bucket).unwrap(),
            prefix: prefix.into(),
            operations: ops.to_vec(),
            access_point: AccessPoint::parse(&format!("arn:aws:s3:us-east-1:123456789012:accesspoint/{ap}")).unwrap(),
            allow: Vec::new(),
        }
    }

    fn router() -> Router {
        Router::new(&[
            route("bob", "shared", "Bob/", &[Read, Write, Delete, List], "bob-ap"),
            route("bob", "shared", "Bob/archive/", &[Read, List], "bob-archive-ap"),
            route("app", "shared", "app/", &[Read, List], "app-ap"),
            route("app", "shared", "app/", &[Write], "app-writer-ap"),
            route("ops", "logs", "", &[Read, Write, Delete, List], "ops-ap"),
        ])
    }

    #[test]
    fn routes_by_identity_bucket_prefix_and_class() {
        let r = router();
        let b = |s: &str| BucketName::parse(s).unwrap();
        let cases: &[(&str, &str, Scope<'_>, OperationClass, Result<&str, &str>)] = &[
            ("bob", "shared", Scope::Key("Bob/report.csv"), Write, Ok("bob-ap")),
            (
                "bob",
                "shared",
                Scope::Key("Bob/archive/2020.csv"),
                Read,
                Ok("bob-archive-ap"),
            ),
            ("bob", "shared", Scope::Key("Bob/archive/2020.csv"), Write, Err("op")),
            ("bob", "shared", Scope::Key("app/x"), Read, Err("prefix")),
            ("bob", "shared", Scope::Key("Bobby/x"), Read, Err("prefix")),
            ("bob", "shared", Scope::ListPrefix("Bob/"), List, Ok("bob-ap")),
            ("bob", "shared", Scope::ListPrefix(""), List, Err("prefix")),
            ("bob", "logs", Scope::Key("x"), Read, Err("bucket")),
            ("app", "shared", Scope::Key("app/seed.txt"), Read, Ok("app-ap")),
            ("app", "shared", Scope::Key("app/new.txt"), Write, Ok("app-writer-ap")),
            ("app", "shared", Scope::Key("app/new.txt"), Delete, Err("op")),
            ("app", "shared", Scope::Bucket, List, Ok("app-ap")),
            ("ops", "logs", Scope::Key("anything/at/all"), Delete, Ok("ops-ap")),
            ("ops", "logs", Scope::ListPrefix(""), List, Ok("ops-ap")),
            ("nobody", "shared", Scope::Key("Bob/x"), Read, Err("bucket")),
        ];
        for (id, bucket, scope, class, want) in cases {
            let got = r.route(id, &b(bucket), *scope, *class);
            match (got, want) {
                (Ok(route), Ok(ap)) => assert_eq!(route.access_point.name(), *ap, "{id} {scope:?}"),
                (Err(Denial::OperationNotAllowed { .. }), Err("op"))
                | (Err(Denial::OutsidePrefixes { .. }), Err("prefix"))
                | (Err(Denial::NoRouteForBucket), Err("bucket")) => {}
                (got, want) => panic!("{id} {bucket} {scope:?} {class:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn lists_the_buckets_of_an_identity() {
        let r = router();
        assert_eq!(
            r.buckets_of("ops").iter().map(BucketName::as_str).collect::<Vec<_>>(),
            ["logs"]
        );
        assert_eq!(r.buckets_of("bob").len(), 1);
        assert!(r.buckets_of("nobody").is_empty());
    }
}
