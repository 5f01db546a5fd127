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

use crate::config::{AccessChange, RouteAccessPoint, RouteBucket, RouteConfig};
use crate::s3::{AccessPoint, BucketName, OperationClass};

pub mod pattern;

use pattern::{AccessPointTemplate, BucketPattern};

/// The routing rule that decided a request, for the bucket it was asked for.
#[derive(Debug, Clone)]
pub struct Route {
    /// The position of the rule in the configuration (`routes[index]`).
    pub index: usize,
    pub identity: Arc<str>,
    /// The client-facing bucket (for a pattern rule, the one the request named).
    pub bucket: BucketName,
    pub prefix: String,
    pub operations: Vec<OperationClass>,
    pub access_point: Arc<AccessPoint>,
    /// The access point as metrics label it: its name, or for a template the template's name
    /// (`{bucket}-rw`), so that bucket names from requests never become label values.
    pub label: Arc<str>,
    /// The access changes the route lets through (`allow`).
    pub allow: Vec<AccessChange>,
    /// The KMS key ids a request may name (`kms_key_ids`).
    pub kms_key_ids: Arc<[Box<str>]>,
    /// The bucket pattern of the rule, when it has one.
    pub pattern: Option<Arc<str>>,
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
    /// A pattern route's template makes no valid access point name of this bucket's (over 50
    /// characters): nothing is sent.
    NoAccessPointName { route: usize },
    /// A listing whose range holds the prefix of a narrower route, and no route for that prefix
    /// allows listing: the listing would show keys the caller may not list.
    ListingCoversUnlisted { route: usize, prefix: String },
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
            Self::NoAccessPointName { .. } => {
                "Access Denied: this bucket's name is too long for the access point its route names.".to_owned()
            }
            Self::ListingCoversUnlisted { .. } => {
                "Access Denied: the listing would include keys this caller may not list (give a narrower prefix).".to_owned()
            }
        }
    }

    /// The same, for a person reading `apgate explain` (who may see the configuration).
    pub fn explain(&self) -> String {
        match self {
            Self::NoRouteForBucket => "no route of this identity names the bucket or a pattern matching it".to_owned(),
            Self::OutsidePrefixes { prefixes } => {
                let quoted: Vec<String> = prefixes.iter().map(|p| format!("{p:?}")).collect();
                format!(
                    "the key or listing prefix is under none of this identity's prefixes for the bucket: {}",
                    quoted.join(", ")
                )
            }
            Self::OperationNotAllowed { route, class } => {
                format!(
                    "routes[{route}] is the most specific route for the key, and it does not allow {} operations",
                    class.as_str()
                )
            }
            Self::NoAccessPointName { route } => {
                format!("routes[{route}]'s access point template makes a name over 50 characters of this bucket's")
            }
            Self::ListingCoversUnlisted { route, prefix } => {
                format!(
                    "the listing's range holds routes[{route}]'s prefix {prefix:?}, and no route for that prefix allows list operations"
                )
            }
        }
    }
}

/// What selection reads of a rule.
trait Rule {
    fn index(&self) -> usize;
    fn prefix(&self) -> &str;
    fn operations(&self) -> &[OperationClass];
}

impl Rule for Arc<Route> {
    fn index(&self) -> usize {
        self.index
    }
    fn prefix(&self) -> &str {
        &self.prefix
    }
    fn operations(&self) -> &[OperationClass] {
        &self.operations
    }
}

/// A rule of a pattern group: its access point is made per bucket.
#[derive(Debug)]
struct PatternRule {
    index: usize,
    prefix: String,
    operations: Vec<OperationClass>,
    access_point: PatternTarget,
    /// See [`Route::label`].
    label: Arc<str>,
    allow: Vec<AccessChange>,
    kms_key_ids: Arc<[Box<str>]>,
}

#[derive(Debug)]
enum PatternTarget {
    Fixed(Arc<AccessPoint>),
    Template(AccessPointTemplate),
}

impl Rule for PatternRule {
    fn index(&self) -> usize {
        self.index
    }
    fn prefix(&self) -> &str {
        &self.prefix
    }
    fn operations(&self) -> &[OperationClass] {
        &self.operations
    }
}

/// The rules of one identity with one bucket pattern.
#[derive(Debug)]
struct PatternGroup {
    pattern: BucketPattern,
    text: Arc<str>,
    /// The first rule's position: ties between equally specific patterns go to the earlier one.
    first: usize,
    rules: Vec<PatternRule>,
}

/// The routing table.
#[derive(Debug, Default)]
pub struct Router {
    /// Routes per identity and bucket name, longest prefix first, then file order (two levels,
    /// so that a look-up with borrowed names allocates nothing).
    table: HashMap<Arc<str>, HashMap<BucketName, Vec<Arc<Route>>>>,
    /// Pattern groups per identity, most specific first, then file order.
    patterns: HashMap<Arc<str>, Vec<PatternGroup>>,
    /// Client-facing bucket names per identity, sorted (answers ListBuckets; patterns cannot be
    /// listed).
    buckets: HashMap<Arc<str>, Vec<BucketName>>,
}

impl Router {
    pub fn new(routes: &[RouteConfig]) -> Self {
        let mut table: HashMap<Arc<str>, HashMap<BucketName, Vec<Arc<Route>>>> = HashMap::new();
        let mut patterns: HashMap<Arc<str>, Vec<PatternGroup>> = HashMap::new();
        let mut buckets: HashMap<Arc<str>, Vec<BucketName>> = HashMap::new();
        for (index, r) in routes.iter().enumerate() {
            let identity: Arc<str> = Arc::from(r.identity.as_str());
            match (&r.bucket, &r.access_point) {
                (RouteBucket::Name(bucket), RouteAccessPoint::Fixed(ap)) => {
                    let route = Route {
                        index,
                        identity: identity.clone(),
                        bucket: bucket.clone(),
                        prefix: r.prefix.clone(),
                        operations: r.operations.clone(),
                        access_point: Arc::new(ap.clone()),
                        label: Arc::from(ap.name()),
                        allow: r.allow.clone(),
                        kms_key_ids: kms_key_ids(r),
                        pattern: None,
                    };
                    table
                        .entry(identity.clone())
                        .or_default()
                        .entry(bucket.clone())
                        .or_default()
                        .push(Arc::new(route));
                    let list = buckets.entry(identity).or_default();
                    if !list.contains(bucket) {
                        list.push(bucket.clone());
                    }
                }
                // Validation fills a template in for a named bucket.
                (RouteBucket::Name(_), RouteAccessPoint::Template(_)) => {}
                (RouteBucket::Pattern(pattern), target) => {
                    let rule = PatternRule {
                        index,
                        prefix: r.prefix.clone(),
                        operations: r.operations.clone(),
                        access_point: match target {
                            RouteAccessPoint::Fixed(ap) => PatternTarget::Fixed(Arc::new(ap.clone())),
                            RouteAccessPoint::Template(t) => PatternTarget::Template(t.clone()),
                        },
                        label: match target {
                            RouteAccessPoint::Fixed(ap) => Arc::from(ap.name()),
                            RouteAccessPoint::Template(t) => Arc::from(t.name_template()),
                        },
                        allow: r.allow.clone(),
                        kms_key_ids: kms_key_ids(r),
                    };
                    let groups = patterns.entry(identity).or_default();
                    match groups.iter_mut().find(|g| g.pattern == *pattern) {
                        Some(group) => group.rules.push(rule),
                        None => groups.push(PatternGroup {
                            text: Arc::from(pattern.as_str()),
                            pattern: pattern.clone(),
                            first: index,
                            rules: vec![rule],
                        }),
                    }
                }
            }
        }
        for routes in table.values_mut().flat_map(HashMap::values_mut) {
            // Stable: equal prefix lengths keep file order.
            routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        }
        for groups in patterns.values_mut() {
            groups.sort_by_key(|g| (std::cmp::Reverse(g.pattern.specificity()), g.first));
            for g in groups.iter_mut() {
                g.rules.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
            }
        }
        for list in buckets.values_mut() {
            list.sort();
        }
        Self {
            table,
            patterns,
            buckets,
        }
    }

    /// Finds the route for a request: the rules naming the bucket if the identity has any, else
    /// those of its most specific pattern that matches the bucket; among them, by prefix.
    pub fn route(
        &self,
        identity: &str,
        bucket: &BucketName,
        scope: Scope<'_>,
        class: OperationClass,
    ) -> Result<Arc<Route>, Denial> {
        if let Some(routes) = self.table.get(identity).and_then(|t| t.get(bucket.as_str())) {
            return select(routes, scope, class).cloned();
        }
        let (identity, groups) = self.patterns.get_key_value(identity).ok_or(Denial::NoRouteForBucket)?;
        let group = groups
            .iter()
            .find(|g| g.pattern.matches(bucket.as_str()))
            .ok_or(Denial::NoRouteForBucket)?;
        let rule = select(&group.rules, scope, class)?;
        let access_point = match &rule.access_point {
            PatternTarget::Fixed(ap) => ap.clone(),
            PatternTarget::Template(t) => Arc::new(
                t.expand(bucket.as_str())
                    .ok_or(Denial::NoAccessPointName { route: rule.index })?,
            ),
        };
        Ok(Arc::new(Route {
            index: rule.index,
            identity: identity.clone(),
            bucket: bucket.clone(),
            prefix: rule.prefix.clone(),
            operations: rule.operations.clone(),
            access_point,
            label: rule.label.clone(),
            allow: rule.allow.clone(),
            kms_key_ids: rule.kms_key_ids.clone(),
            pattern: Some(group.text.clone()),
        }))
    }

    /// The client-facing bucket names an identity may use (its patterns cannot be listed).
    pub fn buckets_of(&self, identity: &str) -> &[BucketName] {
        self.buckets.get(identity).map_or(&[], Vec::as_slice)
    }
}

fn kms_key_ids(r: &RouteConfig) -> Arc<[Box<str>]> {
    r.kms_key_ids.iter().map(|k| Box::from(k.as_str())).collect()
}

/// Among rules sorted longest prefix first, the one for a request: the longest prefix covering
/// the key (or listing prefix) decides; among rules with that prefix, the first allowing the
/// class wins.
fn select<'r, R: Rule>(rules: &'r [R], scope: Scope<'_>, class: OperationClass) -> Result<&'r R, Denial> {
    let covering = |r: &&R| match scope {
        Scope::Key(k) | Scope::ListPrefix(k) => k.starts_with(r.prefix()),
        Scope::Bucket => true,
    };
    let Some(best) = rules.iter().find(covering) else {
        return Err(Denial::OutsidePrefixes {
            prefixes: rules.iter().map(|r| r.prefix().to_owned()).collect(),
        });
    };
    // A listing shows the keys under its prefix, those of narrower rules inside it included: if
    // one of those prefixes has no rule allowing the listing, the keys it keeps unlisted would
    // show here. (A caller with `Bob/` for all and `Bob/secret/` for writes only cannot list
    // `Bob/secret/`, so it cannot list `Bob/` or `Bob/s` either.)
    if let Scope::ListPrefix(listed) = scope {
        let nested = |r: &&R| r.prefix().len() > listed.len() && r.prefix().starts_with(listed);
        if let Some(hidden) = rules.iter().filter(nested).find(|r| {
            !rules
                .iter()
                .any(|other| other.prefix() == r.prefix() && other.operations().contains(&class))
        }) {
            return Err(Denial::ListingCoversUnlisted {
                route: hidden.index(),
                prefix: hidden.prefix().to_owned(),
            });
        }
    }
    rules
        .iter()
        .filter(covering)
        .filter(|r| r.prefix().len() == best.prefix().len() || matches!(scope, Scope::Bucket))
        .find(|r| r.operations().contains(&class))
        .ok_or(Denial::OperationNotAllowed {
            route: best.index(),
            class,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use OperationClass::{Delete, List, Read, Write};

    /// A rule as validation makes it: `bucket` a name or a pattern, `ap` a name or a template.
    fn route(identity: &str, bucket: &str, prefix: &str, ops: &[OperationClass], ap: &str) -> RouteConfig {
        let arn = format!("arn:aws:s3:us-east-1:123456789012:accesspoint/{ap}");
        RouteConfig {
            identity: identity.into(),
            bucket: if BucketPattern::is_pattern(bucket) {
                RouteBucket::Pattern(BucketPattern::parse(bucket).unwrap())
            } else {
                RouteBucket::Name(BucketName::parse(bucket).unwrap())
            },
            prefix: prefix.into(),
            operations: ops.to_vec(),
            access_point: if AccessPointTemplate::is_template(&arn) {
                RouteAccessPoint::Template(AccessPointTemplate::parse(&arn).unwrap())
            } else {
                RouteAccessPoint::Fixed(AccessPoint::parse(&arn).unwrap())
            },
            allow: Vec::new(),
            kms_key_ids: Vec::new(),
        }
    }

    fn router() -> Router {
        Router::new(&[
            route("bob", "shared", "Bob/", &[Read, Write, Delete, List], "bob-ap"),
            route("bob", "shared", "Bob/archive/", &[Read, List], "bob-archive-ap"),
            route("app", "shared", "app/", &[Read, List], "app-ap"),
            route("app", "shared", "app/", &[Write], "app-writer-ap"),
            route("ops", "logs", "", &[Read, Write, Delete, List], "ops-ap"),
            // A drop box inside bob's prefix of another bucket: written, never listed or read.
            route("bob", "drop", "Bob/", &[Read, Write, List], "bob-drop-ap"),
            route("bob", "drop", "Bob/inbox/", &[Write], "bob-inbox-ap"),
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
            // A listing never shows what a narrower route keeps unlisted: not at its prefix, not
            // from any shorter one. Beside it, and for other classes, the wider route still holds.
            ("bob", "drop", Scope::ListPrefix("Bob/inbox/"), List, Err("op")),
            ("bob", "drop", Scope::ListPrefix("Bob/"), List, Err("listing")),
            ("bob", "drop", Scope::ListPrefix("Bob/i"), List, Err("listing")),
            ("bob", "drop", Scope::ListPrefix("Bob/other/"), List, Ok("bob-drop-ap")),
            (
                "bob",
                "drop",
                Scope::ListPrefix("Bob/inbox-old/"),
                List,
                Ok("bob-drop-ap"),
            ),
            ("bob", "drop", Scope::Key("Bob/inbox/x"), Write, Ok("bob-inbox-ap")),
            ("bob", "drop", Scope::Key("Bob/x"), Read, Ok("bob-drop-ap")),
            // A narrower route that allows listing hides nothing.
            ("bob", "shared", Scope::ListPrefix("Bob/"), List, Ok("bob-ap")),
        ];
        for (id, bucket, scope, class, want) in cases {
            let got = r.route(id, &b(bucket), *scope, *class);
            match (got, want) {
                (Ok(route), Ok(ap)) => assert_eq!(route.access_point.name(), *ap, "{id} {scope:?}"),
                (Err(Denial::OperationNotAllowed { .. }), Err("op"))
                | (Err(Denial::ListingCoversUnlisted { route: 6, .. }), Err("listing"))
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
        assert_eq!(r.buckets_of("bob").len(), 2);
        assert!(r.buckets_of("nobody").is_empty());
    }

    fn pattern_router() -> Router {
        Router::new(&[
            route("ops", "team-*", "", &[Read, Write, Delete, List], "{bucket}-rw"),
            route("ops", "team-*", "ro/", &[Read, List], "{bucket}-ro"),
            route("ops", "team-a-*", "", &[Read, List], "{bucket}-a"),
            route("ops", "team-legacy", "", &[Read, List], "legacy-ap"),
            route("ops", "*-logs", "", &[Read], "logs-{bucket}"),
            // As specific as "*-logs" (four literal characters): the first in the file wins.
            route("ops", "*-data", "", &[Read], "data-{bucket}"),
            route("ops", "team*", "", &[Read], "fixed-ap"),
            route("ci", "team-*", "", &[Read], "ci-{bucket}"),
        ])
    }

    #[test]
    fn exact_names_win_then_the_most_specific_pattern() {
        let r = pattern_router();
        let b = |s: &str| BucketName::parse(s).unwrap();
        let long = format!("team-{}", "x".repeat(44));
        // (identity, bucket, key, class, access point name or denial, rule index)
        let cases: &[(&str, &str, &str, OperationClass, Result<&str, &str>, usize)] = &[
            ("ops", "team-web", "x", Write, Ok("team-web-rw"), 0),
            ("ops", "team-web", "ro/x", Read, Ok("team-web-ro"), 1),
            ("ops", "team-web", "ro/x", Write, Err("op"), 1),
            ("ops", "team-a-1", "x", Read, Ok("team-a-1-a"), 2),
            ("ops", "team-a-1", "x", Write, Err("op"), 2),
            ("ops", "team-legacy", "x", Read, Ok("legacy-ap"), 3),
            ("ops", "team-legacy", "x", Write, Err("op"), 3),
            ("ops", "web-logs", "x", Read, Ok("logs-web-logs"), 4),
            ("ops", "teamx", "x", Read, Ok("fixed-ap"), 6),
            ("ops", "dev-web", "x", Read, Err("bucket"), 0),
            ("ops", "team.web", "x", Read, Err("bucket"), 0),
            ("ops", long.as_str(), "x", Read, Err("name"), 0),
            ("ci", "team-web", "x", Read, Ok("ci-team-web"), 7),
            ("ci", "team-web", "x", Write, Err("op"), 7),
            ("bob", "team-web", "x", Read, Err("bucket"), 0),
        ];
        for (id, bucket, key, class, want, index) in cases {
            let got = r.route(id, &b(bucket), Scope::Key(key), *class);
            match (&got, want) {
                (Ok(route), Ok(ap)) => {
                    assert_eq!(route.access_point.name(), *ap, "{id} {bucket} {key}");
                    assert_eq!(route.index, *index, "{id} {bucket} {key}");
                    assert_eq!(route.bucket.as_str(), *bucket);
                    assert_eq!(route.pattern.is_some(), *bucket != "team-legacy");
                }
                (Err(Denial::OperationNotAllowed { route, .. }), Err("op")) => assert_eq!(route, index),
                (Err(Denial::NoRouteForBucket), Err("bucket"))
                | (Err(Denial::NoAccessPointName { .. }), Err("name")) => {}
                (got, want) => panic!("{id} {bucket} {key} {class:?}: got {got:?}, want {want:?}"),
            }
        }
        // "*-logs" and "*-data" are equally specific and cannot both match: the tie rule is file
        // order, seen with two that can.
        let tie = Router::new(&[
            route("ops", "a-*", "", &[Read], "first-{bucket}"),
            route("ops", "*-b", "", &[Read], "second-{bucket}"),
        ]);
        let got = tie.route("ops", &b("a-b"), Scope::Key("k"), Read).unwrap();
        assert_eq!(got.access_point.name(), "first-a-b");
    }

    #[test]
    fn list_buckets_names_only_exact_buckets() {
        let r = pattern_router();
        assert_eq!(
            r.buckets_of("ops").iter().map(BucketName::as_str).collect::<Vec<_>>(),
            ["team-legacy"]
        );
        assert!(r.buckets_of("ci").is_empty());
    }
}
