//! `KSIT_METRICS_AUTH=kubernetes`: `/metrics` and the status page behind Kubernetes
//! authentication and authorization, as controller-runtime's
//! `filters.WithAuthenticationAndAuthorization` and kube-rbac-proxy put them: the caller's bearer
//! token goes to a TokenReview, the user it names to a SubjectAccessReview for verb `get` on the
//! request's path (a non-resource URL, as RBAC grants `/metrics`).
//!
//! Decisions are cached per token and path (by their SHA-256: the cache holds no token), allowed
//! ones for [`ALLOWED_TTL`] and refused ones for [`REFUSED_TTL`], so a Prometheus scraping every
//! 15 s costs the API server two calls a minute rather than eight. The cache holds at most
//! [`MAX_ENTRIES`]; past that the entry nearest its expiry goes. Reviews in flight are bounded by
//! [`MAX_REVIEWS`], so a flood of made-up tokens costs the API server at most that many calls at
//! once (and each refused token is remembered). An API server that cannot be asked is a 503, never
//! a 200.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hyper::header::HeaderValue;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use tokio::sync::Semaphore;

use crate::metrics::{Counters, Family, Registry};

/// How long an allowed token and path is not asked about again: a revoked grant or token is
/// still honoured this long.
pub const ALLOWED_TTL: Duration = Duration::from_secs(60);
/// How long a refused one is: a new grant takes effect within this.
pub const REFUSED_TTL: Duration = Duration::from_secs(10);
/// Decisions remembered; at ~100 bytes each, well under 1 MiB.
pub const MAX_ENTRIES: usize = 4096;
/// TokenReviews and SubjectAccessReviews in flight at once.
pub const MAX_REVIEWS: usize = 4;
/// One API call's deadline; past it the answer is a 503.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// What a request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// 401: no bearer token, or one the API server does not authenticate.
    Unauthenticated(String),
    /// 403: the user may not `get` the path.
    Forbidden(String),
    /// 503: the API server could not be asked; not cached.
    Unavailable(String),
}

impl Verdict {
    fn label(&self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Unauthenticated(_) => "unauthenticated",
            Verdict::Forbidden(_) => "forbidden",
            Verdict::Unavailable(_) => "unavailable",
        }
    }
}

crate::labels! {
    struct Decision { decision }
}

crate::labels! {
    struct Review { review }
}

pub const DECISIONS: Family = Family {
    name: "ksit_exporter_auth_decisions_total",
    help: "Requests for /metrics or / checked under KSIT_METRICS_AUTH=kubernetes, by decision (allowed, unauthenticated, forbidden, unavailable).",
};

pub const REVIEWS: Family = Family {
    name: "ksit_exporter_auth_reviews_total",
    help: "TokenReviews and SubjectAccessReviews sent to the API server (decisions are cached per token and path).",
};

/// The families this module fills; registered whether or not the check is on.
#[derive(Clone)]
pub struct Families {
    decisions: Counters<Decision>,
    reviews: Counters<Review>,
}

impl Families {
    pub fn register(registry: &Registry) -> Self {
        Self {
            decisions: registry.counters(DECISIONS),
            reviews: registry.counters(REVIEWS),
        }
    }
}

type Key = [u8; 32];

/// Checks requests against the API server `client` talks to.
pub struct Authorizer {
    client: kube::Client,
    families: Families,
    cache: Mutex<HashMap<Key, (Verdict, Instant)>>,
    reviews: Semaphore,
}

impl Authorizer {
    pub fn new(client: kube::Client, families: Families) -> Self {
        Self {
            client,
            families,
            cache: Mutex::new(HashMap::new()),
            reviews: Semaphore::new(MAX_REVIEWS),
        }
    }

    /// The verdict for a request with this `Authorization` field for `path`.
    pub async fn check(&self, authorization: Option<&HeaderValue>, path: &str) -> Verdict {
        let verdict = match bearer(authorization) {
            None => Verdict::Unauthenticated(
                "send `Authorization: Bearer <token>` (a service account token)".into(),
            ),
            Some(token) => self.check_token(token, path).await,
        };
        self.families.decisions.inc(&Decision {
            decision: verdict.label().into(),
        });
        verdict
    }

    async fn check_token(&self, token: &str, path: &str) -> Verdict {
        let key = key(token, path);
        if let Some(verdict) = self.cached(&key) {
            return verdict;
        }
        let verdict = {
            // Closed only when the process stops, so acquiring cannot fail while it serves.
            let Ok(_permit) = self.reviews.acquire().await else {
                return Verdict::Unavailable("shutting down".into());
            };
            // Another request may have asked while this one waited.
            if let Some(verdict) = self.cached(&key) {
                return verdict;
            }
            self.review(token, path).await
        };
        let ttl = match verdict {
            Verdict::Allowed => ALLOWED_TTL,
            Verdict::Unauthenticated(_) | Verdict::Forbidden(_) => REFUSED_TTL,
            Verdict::Unavailable(_) => return verdict,
        };
        self.remember(key, verdict.clone(), ttl);
        verdict
    }

    fn cached(&self, key: &Key) -> Option<Verdict> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache
            .get(key)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(v, _)| v.clone())
    }

    fn remember(&self, key: Key, verdict: Verdict, ttl: Duration) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if cache.len() >= MAX_ENTRIES && !cache.contains_key(&key) {
            cache.retain(|_, (_, expires)| *expires > now);
            if cache.len() >= MAX_ENTRIES
                && let Some(nearest) = cache
                    .iter()
                    .min_by_key(|(_, (_, expires))| *expires)
                    .map(|(k, _)| *k)
            {
                cache.remove(&nearest);
            }
        }
        cache.insert(key, (verdict, now + ttl));
    }

    /// Decisions held now (for tests of the bound).
    pub fn cached_len(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    async fn review(&self, token: &str, path: &str) -> Verdict {
        let user = match self.authenticate(token).await {
            Ok(Ok(user)) => user,
            Ok(Err(why)) => return Verdict::Unauthenticated(why),
            Err(why) => return Verdict::Unavailable(why),
        };
        let name = user.username.clone().unwrap_or_default();
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                uid: user.uid,
                groups: user.groups,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(path.to_string()),
                    verb: Some("get".into()),
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        self.families.reviews.inc(&Review {
            review: "subjectaccessreview".into(),
        });
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        match call(api.create(&PostParams::default(), &sar)).await {
            Ok(answer) => match answer.status {
                Some(s) if s.allowed => Verdict::Allowed,
                Some(s) => Verdict::Forbidden(format!(
                    "{name} may not get {path}{}",
                    s.reason.map(|r| format!(": {r}")).unwrap_or_default()
                )),
                None => Verdict::Unavailable(
                    "the SubjectAccessReview came back without a status".into(),
                ),
            },
            Err(why) => Verdict::Unavailable(format!("SubjectAccessReview: {why}")),
        }
    }

    /// The user a token is, `Ok(Err(why))` when the API server does not authenticate it, or
    /// `Err(why)` when it could not be asked.
    async fn authenticate(&self, token: &str) -> Result<Result<UserInfo, String>, String> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: None,
            },
            ..Default::default()
        };
        self.families.reviews.inc(&Review {
            review: "tokenreview".into(),
        });
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = call(api.create(&PostParams::default(), &review))
            .await
            .map_err(|why| format!("TokenReview: {why}"))?;
        let status = answer.status.unwrap_or_default();
        match (status.authenticated, status.user) {
            (Some(true), Some(user)) => Ok(Ok(user)),
            _ => Ok(Err(status
                .error
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "the token is not valid".into()))),
        }
    }
}

/// One API call with [`REVIEW_TIMEOUT`]; errors say what the sidecar needs when it is its RBAC.
async fn call<T>(
    request: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(REVIEW_TIMEOUT, request).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(kube::Error::Api(e))) if e.code == 403 => Err(format!(
            "the sidecar's service account may not create it ({}); grant create on \
             tokenreviews and subjectaccessreviews (the chart does with metrics.auth=kubernetes)",
            e.message
        )),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {REVIEW_TIMEOUT:?}")),
    }
}

/// The token of `Authorization: Bearer <token>` (the scheme in any case, RFC 9110 11.1).
fn bearer(value: Option<&HeaderValue>) -> Option<&str> {
    let value = value?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn key(token: &str, path: &str) -> Key {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(token.as_bytes());
    ctx.update(&[0]);
    ctx.update(path.as_bytes());
    let mut key = [0; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_as_rfc_9110_writes_them() {
        let h = |v: &str| HeaderValue::from_str(v).expect("a header");
        assert_eq!(bearer(Some(&h("Bearer abc"))), Some("abc"));
        assert_eq!(bearer(Some(&h("bearer abc "))), Some("abc"));
        assert_eq!(bearer(Some(&h("Basic abc"))), None);
        assert_eq!(bearer(Some(&h("Bearer "))), None);
        assert_eq!(bearer(Some(&h("Bearer"))), None);
        assert_eq!(bearer(None), None);
    }

    /// A client that is never called: the cache alone is under test.
    fn authorizer() -> Authorizer {
        let config = kube::Config::new("http://127.0.0.1:1".parse().expect("a URL"));
        let client = kube::Client::try_from(config).expect("a client");
        Authorizer::new(client, Families::register(&Registry::new()))
    }

    #[tokio::test]
    async fn the_cache_is_bounded_and_forgets_what_expires_first() {
        let a = authorizer();
        for i in 0..MAX_ENTRIES + 500 {
            let ttl = if i == 0 { ALLOWED_TTL } else { REFUSED_TTL };
            a.remember(
                key(&format!("token-{i}"), "/metrics"),
                Verdict::Allowed,
                ttl,
            );
        }
        assert_eq!(a.cached_len(), MAX_ENTRIES);
        // The one remembered longest is still there; the earliest short ones went first.
        assert_eq!(
            a.cached(&key("token-0", "/metrics")),
            Some(Verdict::Allowed)
        );
        assert_eq!(a.cached(&key("token-1", "/metrics")), None);
        let last = format!("token-{}", MAX_ENTRIES + 499);
        assert_eq!(a.cached(&key(&last, "/metrics")), Some(Verdict::Allowed));
        assert_eq!(a.cached(&key(&last, "/")), None, "per path");
    }

    #[tokio::test]
    async fn an_api_server_that_cannot_be_asked_is_unavailable_and_not_remembered() {
        let a = authorizer();
        let token = HeaderValue::from_static("Bearer abc");
        match a.check(Some(&token), "/metrics").await {
            Verdict::Unavailable(why) => assert!(why.starts_with("TokenReview: "), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(a.cached_len(), 0);
        assert!(matches!(
            a.check(None, "/metrics").await,
            Verdict::Unauthenticated(_)
        ));
    }

    #[test]
    fn keys_differ_by_token_and_path() {
        assert_ne!(key("a", "/metrics"), key("a", "/"));
        assert_ne!(key("a", "/metrics"), key("b", "/metrics"));
        // The separator keeps "ab" + "c" apart from "a" + "bc".
        assert_ne!(key("ab", "c"), key("a", "bc"));
    }
}
