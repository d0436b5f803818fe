//! Tenants: who is asking, and what they may do.
//!
//! A request names its tenant with a header field `"authorization": "Bearer
//! TOKEN"`. Tokens are stored as SHA-256 hashes in the configuration and
//! compared in constant time, against every tenant, so neither the token nor
//! which tenant it belongs to leaks through timing. A request without
//! authorization belongs to the `default` tenant, if there is one; the
//! built-in configuration has one, so the guide's client works unchanged.
//!
//! Each tenant has its own routes (the server's, with its own added or
//! overriding), its own plugin settings, and its own limits: requests in
//! flight, requests per second, plugin deadline and memory. A tenant over
//! its limits is answered `overloaded` at once, so it cannot queue work in
//! front of others.
//!
//! Beside other tenants, the `default` tenant (anyone who can connect) is
//! held to half of the server's concurrent plugin calls unless its own
//! `concurrent-requests` says otherwise, so anonymous clients cannot take
//! every instance slot from the tenants who have tokens. A server with no
//! other tenant leaves it the whole pool, as the guide's server would.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::kv::KvLimits;
use crate::message::{ErrorCode, ProtocolError};
use crate::router::Routes;

/// The tenant of requests that carry no authorization.
pub const DEFAULT_TENANT: &str = "default";

/// The SHA-256 of a bearer token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// Parses 64 hex digits.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let hex = hex.trim();
        if hex.len() != 64 || !hex.is_ascii() {
            return None;
        }
        let mut bytes = [0; 32];
        for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks(2)) {
            *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        Some(Self(bytes))
    }

    /// True if this hash is one of `hashes`: compared with every one of
    /// them in constant time, so timing tells nothing of the token.
    pub fn is_among(&self, hashes: &[TokenHash]) -> bool {
        let found = hashes.iter().fold(subtle::Choice::from(0), |found, hash| found | hash.0.ct_eq(&self.0));
        bool::from(found)
    }
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({self})")
    }
}

/// A tenant's own limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TenantLimits {
    /// Requests of this tenant being answered at once.
    pub concurrent_requests: Option<NonZeroU32>,
    /// Sustained requests per second.
    pub requests_per_second: Option<NonZeroU32>,
    /// Requests allowed in a burst above the rate (defaults to the rate).
    pub burst: Option<NonZeroU32>,
}

/// What a tenant's configuration says, before it is merged with the server's.
#[derive(Debug, Clone, Default)]
pub struct TenantSpec {
    pub name: String,
    pub token: Option<TokenHash>,
    /// Routes added to, or replacing, the server's.
    pub routes: Routes,
    /// Plugin settings added to, or replacing, the server's (per key).
    pub plugin_config: BTreeMap<String, BTreeMap<String, String>>,
    pub limits: TenantLimits,
    /// Overrides of the server's per-call limits.
    pub plugin_deadline: Option<Duration>,
    pub plugin_memory: Option<usize>,
    /// Its key-value limits, when its configuration has its own (merged
    /// with the server's, key by key).
    pub kv_limits: Option<KvLimits>,
}

/// One tenant, merged with the server's settings and ready to serve.
pub struct Tenant {
    pub name: Arc<str>,
    pub routes: Routes,
    plugin_config: HashMap<String, Arc<BTreeMap<String, String>>>,
    /// How long one of its plugin calls may take, and the memory it may
    /// grow to: the server's, or the tenant's own.
    pub plugin_deadline: Duration,
    pub plugin_memory: usize,
    pub limits: TenantLimits,
    /// What its plugins may store and do in the key-value store: the
    /// server's `[kv]` limits, or its own.
    pub kv_limits: KvLimits,
    /// Shared with the tenant of the same name and limits in the previous
    /// configuration, so a reload does not reset the counts.
    admission: Arc<Admission>,
}

impl fmt::Debug for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tenant").field("name", &self.name).field("limits", &self.limits).finish_non_exhaustive()
    }
}

/// Enforces a tenant's request limits.
struct Admission {
    in_flight: Option<Arc<Semaphore>>,
    rate: Option<DefaultDirectRateLimiter>,
}

impl Admission {
    fn new(limits: &TenantLimits) -> Self {
        Self {
            in_flight: limits.concurrent_requests.map(|n| Arc::new(Semaphore::new(n.get() as usize))),
            rate: limits.requests_per_second.map(|rate| {
                let burst = limits.burst.unwrap_or(rate);
                RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
            }),
        }
    }
}

/// Held while a tenant's request is answered.
#[derive(Debug)]
pub struct Admitted {
    _permit: Option<OwnedSemaphorePermit>,
}

impl Tenant {
    /// Admits one request, or says why not.
    pub fn admit(&self) -> Result<Admitted, ProtocolError> {
        let overloaded = |why: String| ProtocolError::new(ErrorCode::Overloaded, format!("tenant {} is {why}; retry later", self.name));
        let permit = match &self.admission.in_flight {
            Some(slots) => Some(Arc::clone(slots).try_acquire_owned().map_err(|_| {
                let limit = self.limits.concurrent_requests.map_or(0, NonZeroU32::get);
                overloaded(format!("at its limit of {limit} concurrent requests"))
            })?),
            None => None,
        };
        if let Some(rate) = &self.admission.rate {
            rate.check().map_err(|_| {
                let limit = self.limits.requests_per_second.map_or(0, NonZeroU32::get);
                overloaded(format!("over its limit of {limit} requests per second"))
            })?;
        }
        Ok(Admitted { _permit: permit })
    }

    /// The settings plugin `name` reads through its `config` import.
    pub fn config_for(&self, plugin: &str) -> Arc<BTreeMap<String, String>> {
        self.plugin_config.get(plugin).cloned().unwrap_or_default()
    }
}

/// Every tenant of a configuration.
#[derive(Debug, Default)]
pub struct Tenants {
    list: Vec<Arc<Tenant>>,
    /// Indexes into `list` of tenants with a token.
    tokens: Vec<(TokenHash, usize)>,
    default: Option<usize>,
    /// The `default` tenant's concurrent requests are the server's share
    /// ([`default_share`]), its configuration setting none.
    default_shares: bool,
}

/// What the server's own settings give every tenant.
pub struct ServerDefaults<'a> {
    pub routes: &'a Routes,
    pub plugin_config: &'a BTreeMap<String, BTreeMap<String, String>>,
    /// The server's plugin call deadline and memory, for tenants that set
    /// none of their own.
    pub plugin_deadline: Duration,
    pub plugin_memory: usize,
    /// Plugin calls the server runs at once (`max-concurrent-calls`).
    pub max_concurrent_calls: u32,
    /// The key-value limits of tenants that set none of their own.
    pub kv_limits: KvLimits,
}

impl ServerDefaults<'_> {
    /// The `default` tenant's concurrent requests when other tenants share
    /// the server and its configuration sets none: half the instance slots.
    pub fn default_tenant_share(&self) -> NonZeroU32 {
        default_share(self.max_concurrent_calls)
    }
}

/// The `default` tenant's concurrent requests when other tenants share a
/// server running `max_concurrent_calls` calls at once and its
/// configuration sets none: half the instance slots.
fn default_share(max_concurrent_calls: u32) -> NonZeroU32 {
    NonZeroU32::new(max_concurrent_calls / 2).unwrap_or(NonZeroU32::MIN)
}

impl Tenants {
    /// Merges each tenant's spec with the server's defaults.
    pub fn build(mut specs: Vec<TenantSpec>, server: &ServerDefaults<'_>) -> anyhow::Result<Self> {
        let mut tenants = Self::default();
        if specs.iter().any(|spec| spec.name != DEFAULT_TENANT)
            && let Some(default) = specs.iter_mut().find(|spec| spec.name == DEFAULT_TENANT)
            && default.limits.concurrent_requests.is_none()
        {
            default.limits.concurrent_requests = Some(server.default_tenant_share());
            tenants.default_shares = true;
        }
        for spec in specs {
            let index = tenants.list.len();
            if let Some(token) = spec.token {
                anyhow::ensure!(
                    spec.name != DEFAULT_TENANT,
                    "tenant {DEFAULT_TENANT} is who sends no token, so a token-sha256 there would be accepted but never required: give the token to a named tenant (and leave out [tenants.{DEFAULT_TENANT}] to require a token of every request)"
                );
                if let Some((_, other)) = tenants.tokens.iter().find(|(t, _)| *t == token) {
                    anyhow::bail!("tenants {} and {} have the same token", tenants.list[*other].name, spec.name);
                }
                tenants.tokens.push((token, index));
            } else if spec.name != DEFAULT_TENANT {
                anyhow::bail!("tenant {} has no token-sha256; only the {DEFAULT_TENANT} tenant may go without", spec.name);
            }
            if spec.name == DEFAULT_TENANT {
                tenants.default = Some(index);
            }
            tenants.list.push(Arc::new(merge(spec, server)?));
        }
        Ok(tenants)
    }

    /// Only a `default` tenant, with the server's settings and no limits of
    /// its own: the configuration when none names tenants.
    pub fn only_default(server: &ServerDefaults<'_>) -> anyhow::Result<Self> {
        Self::build(vec![TenantSpec { name: DEFAULT_TENANT.into(), ..TenantSpec::default() }], server)
    }

    /// For a reload that changes `max-concurrent-calls`, which takes effect
    /// at the next start: the `default` tenant's share is of the instance
    /// slots the server has, `max_concurrent_calls`, not of the new value
    /// (a share of a thousand slots a server of two does not have left
    /// anonymous clients free to take every slot).
    pub fn share_default_of(&mut self, max_concurrent_calls: u32) {
        let Some(index) = self.default.filter(|_| self.default_shares) else { return };
        let share = Some(default_share(max_concurrent_calls));
        if let Some(tenant) = self.list.get_mut(index).and_then(Arc::get_mut)
            && tenant.limits.concurrent_requests != share
        {
            tenant.limits.concurrent_requests = share;
            tenant.admission = Arc::new(Admission::new(&tenant.limits));
        }
    }

    /// Keeps what `previous` counted, so that a reload does not reset it:
    /// the request counts of tenants whose name and limits did not change,
    /// and the experiments of their splits that did not change.
    pub fn keep_counts_from(&mut self, previous: &Tenants) {
        for tenant in &mut self.list {
            let Some(old) = previous.list.iter().find(|old| old.name == tenant.name) else {
                continue;
            };
            if let Some(tenant) = Arc::get_mut(tenant) {
                if old.limits == tenant.limits {
                    tenant.admission = Arc::clone(&old.admission);
                }
                tenant.routes.keep_experiments_from(&old.routes);
            }
        }
    }

    /// The tenant a request belongs to, by the value of its `authorization`
    /// field (`None` if it has none).
    pub fn identify(&self, credential: Option<&Value>) -> Result<&Arc<Tenant>, ProtocolError> {
        let unauthorized = |why: &str| ProtocolError::new(ErrorCode::Unauthorized, format!("unauthorized: {why}"));
        let index = match credential {
            None => self.default.ok_or_else(|| unauthorized("this server has no default tenant; send \"authorization\": \"Bearer TOKEN\""))?,
            Some(Value::String(value)) => {
                let token = bearer_token(value).ok_or_else(|| unauthorized("\"authorization\" must be \"Bearer TOKEN\""))?;
                self.find_token(&TokenHash::of(token)).ok_or_else(|| unauthorized("the bearer token matches no tenant"))?
            }
            Some(_) => return Err(unauthorized("\"authorization\" must be a string, \"Bearer TOKEN\"")),
        };
        Ok(&self.list[index])
    }

    /// Compares `hash` with every tenant's token in constant time.
    fn find_token(&self, hash: &TokenHash) -> Option<usize> {
        let mut found = subtle::Choice::from(0);
        let mut index = 0u64;
        for (token, i) in &self.tokens {
            let equal = token.0.ct_eq(&hash.0);
            index = u64::conditional_select(&index, &(*i as u64), equal);
            found |= equal;
        }
        bool::from(found).then_some(index as usize)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.list.iter()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Tenant>> {
        self.list.iter().find(|t| &*t.name == name)
    }

    pub fn has_default(&self) -> bool {
        self.default.is_some()
    }

    /// True if some tenant has a token (which must then not cross a network in plain text).
    pub fn has_tokens(&self) -> bool {
        !self.tokens.is_empty()
    }
}

/// `Bearer TOKEN` ─▶ `TOKEN` (the scheme is case-insensitive).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn merge(spec: TenantSpec, server: &ServerDefaults<'_>) -> anyhow::Result<Tenant> {
    // Each tenant counts its own requests in a server-wide split.
    let mut routes = server.routes.with_own_experiments();
    for route in spec.routes.iter() {
        routes.set_route(&route.pattern, route.target.clone())?;
    }
    let mut plugin_config: BTreeMap<String, BTreeMap<String, String>> = server.plugin_config.clone();
    for (plugin, values) in spec.plugin_config {
        plugin_config.entry(plugin).or_default().extend(values);
    }
    // Settings for a plugin that no route names are warned of by
    // config::Settings::from_file, which knows which table each came from.
    let name: Arc<str> = spec.name.into();
    Ok(Tenant {
        admission: Arc::new(Admission::new(&spec.limits)),
        name,
        routes,
        plugin_config: plugin_config.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
        plugin_deadline: spec.plugin_deadline.unwrap_or(server.plugin_deadline),
        plugin_memory: spec.plugin_memory.unwrap_or(server.plugin_memory),
        kv_limits: spec.kv_limits.unwrap_or(server.kv_limits),
        limits: spec.limits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::Target;

    fn defaults() -> (Routes, BTreeMap<String, BTreeMap<String, String>>) {
        let config = BTreeMap::from([("search".to_owned(), BTreeMap::from([("a".to_owned(), "server".to_owned()), ("b".to_owned(), "server".to_owned())]))]);
        (Routes::guide(), config)
    }

    fn tenants(specs: Vec<TenantSpec>) -> Tenants {
        let (routes, plugin_config) = defaults();
        Tenants::build(specs, &ServerDefaults { routes: &routes, plugin_config: &plugin_config, plugin_deadline: Duration::from_millis(100), plugin_memory: 64 << 20, max_concurrent_calls: 256, kv_limits: KvLimits::default() }).unwrap()
    }


    fn spec(name: &str, token: Option<&str>) -> TenantSpec {
        TenantSpec { name: name.into(), token: token.map(TokenHash::of), ..TenantSpec::default() }
    }

    #[test]
    fn tokens_identify_tenants() {
        let tenants = tenants(vec![spec("default", None), spec("alpha", Some("a-secret")), spec("beta", Some("b-secret"))]);
        assert_eq!(&*tenants.identify(None).unwrap().name, "default");
        assert_eq!(&*tenants.identify(Some(&"Bearer a-secret".into())).unwrap().name, "alpha");
        assert_eq!(&*tenants.identify(Some(&"bearer  b-secret ".into())).unwrap().name, "beta");
        for bad in [Value::from("Bearer nope"), Value::from("Basic a-secret"), Value::from("a-secret"), Value::from(3)] {
            let error = tenants.identify(Some(&bad)).unwrap_err();
            assert_eq!(error.code, ErrorCode::Unauthorized, "{bad}");
            assert!(error.message.starts_with("unauthorized: "), "{error}");
        }
    }

    #[test]
    fn without_a_default_tenant_authorization_is_required() {
        let tenants = tenants(vec![spec("alpha", Some("a"))]);
        let error = tenants.identify(None).unwrap_err();
        assert_eq!(error.code, ErrorCode::Unauthorized);
    }

    #[test]
    fn configuration_mistakes_are_refused() {
        let (routes, plugin_config) = defaults();
        let server = ServerDefaults { routes: &routes, plugin_config: &plugin_config, plugin_deadline: Duration::from_millis(100), plugin_memory: 64 << 20, max_concurrent_calls: 256, kv_limits: KvLimits::default() };
        let error = Tenants::build(vec![spec("alpha", None)], &server).unwrap_err().to_string();
        assert!(error.contains("alpha has no token-sha256"), "{error}");
        let error = Tenants::build(vec![spec(DEFAULT_TENANT, Some("d")), spec("alpha", Some("a"))], &server).unwrap_err().to_string();
        assert!(error.contains("accepted but never required"), "{error}");
        let error = Tenants::build(vec![spec("alpha", Some("x")), spec("beta", Some("x"))], &server).unwrap_err().to_string();
        assert!(error.contains("the same token"), "{error}");
    }

    #[test]
    fn token_hashes_parse_from_hex() {
        let hash = TokenHash::of("secret");
        assert_eq!(TokenHash::from_hex(&hash.to_string()), Some(hash));
        assert_eq!(TokenHash::from_hex("abc"), None);
        assert_eq!(TokenHash::from_hex(&"zz".repeat(32)), None);
    }

    #[test]
    fn tenant_routes_and_settings_override_the_servers() {
        let mut alpha = spec("alpha", Some("a"));
        alpha.routes.set_route("text/json", Target::plugin("search@fuzzy")).unwrap();
        alpha.plugin_config.insert("search".into(), BTreeMap::from([("b".to_owned(), "alpha".to_owned())]));
        alpha.plugin_deadline = Some(std::time::Duration::from_millis(5));
        let tenants = tenants(vec![spec("default", None), alpha]);
        let alpha = tenants.get("alpha").unwrap();
        assert_eq!(alpha.routes.resolve("text/json").map(|r| r.target.to_string()).as_deref(), Some("search@fuzzy"));
        assert_eq!(alpha.routes.resolve("x/y").map(|r| r.target.to_string()).as_deref(), Some("binary-echo"));
        let config = alpha.config_for("search");
        assert_eq!((config["a"].as_str(), config["b"].as_str()), ("server", "alpha"));
        assert_eq!(alpha.plugin_deadline, Duration::from_millis(5));
        let default = tenants.get("default").unwrap();
        assert_eq!(default.config_for("search")["b"], "server");
        assert_eq!((default.plugin_deadline, default.plugin_memory), (Duration::from_millis(100), 64 << 20));
    }

    #[test]
    fn limits_refuse_what_is_over_them() {
        let mut alpha = spec("alpha", Some("a"));
        alpha.limits.concurrent_requests = NonZeroU32::new(2);
        let tenants = tenants(vec![alpha]);
        let alpha = tenants.get("alpha").unwrap();
        let first = alpha.admit().unwrap();
        let _second = alpha.admit().unwrap();
        let error = alpha.admit().unwrap_err();
        assert_eq!(error.code, ErrorCode::Overloaded);
        assert!(error.message.contains("limit of 2 concurrent requests"), "{error}");
        drop(first);
        assert!(alpha.admit().is_ok());

        let mut beta = spec("beta", Some("b"));
        beta.limits.requests_per_second = NonZeroU32::new(5);
        let tenants = self::tenants(vec![beta]);
        let beta = tenants.get("beta").unwrap();
        let admitted = (0..20).filter(|_| beta.admit().is_ok()).count();
        assert_eq!(admitted, 5, "a burst of the rate, then refusals");
    }

    #[test]
    fn counts_survive_a_reload_when_limits_do_not_change() {
        let mut alpha = spec("alpha", Some("a"));
        alpha.limits.concurrent_requests = NonZeroU32::new(1);
        let old = tenants(vec![alpha.clone()]);
        let _held = old.get("alpha").unwrap().admit().unwrap();
        let mut new = tenants(vec![alpha.clone()]);
        new.keep_counts_from(&old);
        assert!(new.get("alpha").unwrap().admit().is_err(), "the request in flight still counts");
        alpha.limits.concurrent_requests = NonZeroU32::new(2);
        let mut changed = tenants(vec![alpha]);
        changed.keep_counts_from(&old);
        assert!(changed.get("alpha").unwrap().admit().is_ok(), "new limits start afresh");
    }
}
