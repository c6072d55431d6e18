//! Bearer tokens: who may read and write which namespaces.
//!
//! A tonic interceptor authenticates every SemanticCache call from its metadata alone, before
//! the message is decoded: a missing or unknown token is UNAUTHENTICATED and a token over its
//! rate limit RESOURCE_EXHAUSTED, with no work done. The caller it finds travels in the
//! request's extensions, and each handler checks the namespace it names (PERMISSION_DENIED)
//! before calling the cache. Health and reflection are not intercepted: probes must work
//! without a secret, and the schema is public anyway.
//!
//! The config file holds SHA-256 digests, never tokens. Tokens are 256 random bits, so a fast
//! hash is as good as a password hash here (there is nothing to guess), and a lookup by digest
//! leaks through its timing only facts about digests, from which no token can be recovered.

use governor::{clock::DefaultClock, state::InMemoryState, state::NotKeyed, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use tonic::{service::Interceptor, Request, Status};

/// What a token may do to a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// Lookup, GetNamespace, Stats, Export.
    Read,
    /// Store, Delete, ConfigureNamespace, DropNamespace.
    Write,
}

impl Right {
    fn name(self) -> &'static str {
        match self {
            Right::Read => "read",
            Right::Write => "write",
        }
    }
}

/// One `[tokens.NAME]` table of the config file.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenSpec {
    /// For logs and refusals; the token itself is never shown.
    pub name: String,
    /// SHA-256 of the token, lowercase hex.
    pub sha256: String,
    /// Namespaces it may read (`*` = all).
    pub read: Vec<String>,
    /// Namespaces it may write (`*` = all).
    pub write: Vec<String>,
    /// Requests per second (bursts up to one second's worth); unlimited when `None`.
    pub requests_per_second: Option<NonZeroU32>,
}

/// A new token: `sc_` and 64 hex digits (256 bits from the OS's random source).
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("sc_{}", hex(&bytes)))
}

/// The digest that the config file holds for `token`.
pub fn hash_token(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `s` is a digest as [`hash_token`] writes it.
pub fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

struct Token {
    spec: Arc<TokenSpec>,
    limiter: Option<RateLimiter<NotKeyed, InMemoryState, DefaultClock>>,
}

/// The caller of a request, as the interceptor found it.
#[derive(Clone)]
pub enum Caller {
    /// No tokens are configured: every caller may do everything.
    Anyone,
    Token(Arc<TokenSpec>),
}

fn grants(list: &[String], namespace: &str) -> bool {
    list.iter().any(|n| n == "*" || n == namespace)
}

impl Caller {
    /// Whether the caller has `right` on `namespace`; an empty namespace means all of them.
    pub fn may(&self, right: Right, namespace: &str) -> bool {
        match self {
            Caller::Anyone => true,
            Caller::Token(t) => {
                let list = match right {
                    Right::Read => &t.read,
                    Right::Write => &t.write,
                };
                if namespace.is_empty() {
                    list.iter().any(|n| n == "*")
                } else {
                    grants(list, namespace)
                }
            }
        }
    }

    /// PERMISSION_DENIED unless the caller has `right` on `namespace`.
    pub fn check(&self, right: Right, namespace: &str) -> Result<(), Status> {
        if self.may(right, namespace) {
            return Ok(());
        }
        let Caller::Token(t) = self else { unreachable!("Anyone may do anything") };
        let what = if namespace.is_empty() {
            format!("all namespaces (a `{}` grant of \"*\")", right.name())
        } else {
            format!("namespace {namespace:?}")
        };
        tracing::debug!(token = %t.name, right = right.name(), namespace, "permission denied");
        let granted = match right {
            Right::Read => &t.read,
            Right::Write => &t.write,
        };
        let grants = if granted.is_empty() {
            format!("it has no {} grant", right.name())
        } else {
            format!("its config grants {} on [{}]", right.name(), granted.join(", "))
        };
        Err(Status::permission_denied(format!("token {:?} may not {} {what}; {grants}", t.name, right.name())))
    }

    /// Whether the caller may see that `namespace` exists (any grant on it).
    pub fn sees(&self, namespace: &str) -> bool {
        self.may(Right::Read, namespace) || self.may(Right::Write, namespace)
    }
}

/// The caller of a request that went through [`Auth`]; `Anyone` for one that did not (the
/// service used in-process without the interceptor).
pub fn caller<T>(request: &Request<T>) -> Caller {
    request.extensions().get::<Caller>().cloned().unwrap_or(Caller::Anyone)
}

/// The interceptor: authenticates each call and applies its token's rate limit.
#[derive(Clone)]
pub struct Auth {
    tokens: Arc<HashMap<[u8; 32], Token>>,
}

impl Auth {
    /// From the config file's tokens (already checked: digests well formed and distinct).
    pub fn new(specs: &[TokenSpec]) -> Self {
        let tokens = specs
            .iter()
            .map(|spec| {
                let mut digest = [0u8; 32];
                for (i, byte) in digest.iter_mut().enumerate() {
                    *byte = u8::from_str_radix(&spec.sha256[2 * i..2 * i + 2], 16).expect("digest checked at load");
                }
                let limiter =
                    spec.requests_per_second.map(|rps| RateLimiter::direct(Quota::per_second(rps).allow_burst(rps)));
                (digest, Token { spec: Arc::new(spec.clone()), limiter })
            })
            .collect();
        Self { tokens: Arc::new(tokens) }
    }

    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    fn authenticate(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Caller, Status> {
        if !self.enabled() {
            return Ok(Caller::Anyone);
        }
        let Some(value) = metadata.get("authorization") else {
            return Err(Status::unauthenticated(
                "this server requires a token: send the metadata `authorization: Bearer <token>`",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| Status::unauthenticated("the authorization metadata must be `Bearer <token>`"))?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let Some(found) = self.tokens.get(&digest) else {
            tracing::debug!("refused a call with an unknown token");
            return Err(Status::unauthenticated("the bearer token is not valid for this server"));
        };
        if let Some(limiter) = &found.limiter {
            if let Err(not_until) = limiter.check() {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(&DefaultClock::default()));
                return Err(super::status::exhausted_retry_after(
                    format!(
                        "token {:?} is over its limit of {} requests per second (requests_per_second in its \
                         config); retry in {} ms",
                        found.spec.name,
                        found.spec.requests_per_second.map_or(0, NonZeroU32::get),
                        wait.as_millis().max(1)
                    ),
                    wait,
                ));
            }
        }
        Ok(Caller::Token(found.spec.clone()))
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = self.authenticate(request.metadata())?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn spec(name: &str, token: &str, read: &[&str], write: &[&str], rps: Option<u32>) -> TokenSpec {
        TokenSpec {
            name: name.into(),
            sha256: hash_token(token),
            read: read.iter().map(|s| s.to_string()).collect(),
            write: write.iter().map(|s| s.to_string()).collect(),
            requests_per_second: rps.and_then(NonZeroU32::new),
        }
    }

    fn call(auth: &mut Auth, header: Option<&str>) -> Result<Caller, Status> {
        let mut req = Request::new(());
        if let Some(h) = header {
            req.metadata_mut().insert("authorization", h.parse().unwrap());
        }
        auth.call(req).map(|r| caller(&r))
    }

    #[test]
    fn tokens_are_random_and_hash_to_digests() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with("sc_") && a.len() == 67);
        assert!(is_digest(&hash_token(&a)));
        // `printf %s abc | sha256sum`
        assert_eq!(hash_token("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(!is_digest("BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"));
    }

    #[test]
    fn interceptor_authenticates_and_grants_check_namespaces() {
        let mut auth = Auth::new(&[
            spec("gateway", "s3cret", &["support", "docs"], &["support"], None),
            spec("admin", "root", &["*"], &["*"], None),
        ]);
        for (header, what) in
            [(None, "requires a token"), (Some("Basic abc"), "Bearer"), (Some("Bearer nope"), "not valid")]
        {
            let status = call(&mut auth, header).err().unwrap();
            assert_eq!(status.code(), Code::Unauthenticated);
            assert!(status.message().contains(what), "{}", status.message());
            assert!(!status.message().contains("nope"), "a token is never echoed");
        }
        let gw = call(&mut auth, Some("Bearer s3cret")).unwrap();
        assert!(gw.may(Right::Read, "docs") && gw.may(Right::Write, "support"));
        assert!(!gw.may(Right::Write, "docs") && !gw.may(Right::Read, "billing") && !gw.may(Right::Read, ""));
        let denied = gw.check(Right::Write, "docs").unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
        assert!(denied.message().contains("\"gateway\" may not write namespace \"docs\""), "{}", denied.message());
        assert!(gw.sees("docs") && !gw.sees("billing"));
        let admin = call(&mut auth, Some("bearer root")).unwrap();
        assert!(admin.may(Right::Write, "") && admin.may(Right::Read, "anything"));
        let open = call(&mut Auth::new(&[]), None).unwrap();
        assert!(open.may(Right::Write, ""));
    }

    #[test]
    fn rate_limit_refuses_beyond_the_burst() {
        let mut auth = Auth::new(&[spec("slow", "t", &["*"], &[], Some(3))]);
        let results: Vec<_> = (0..5).map(|_| call(&mut auth, Some("Bearer t")).err().map(|s| s.code())).collect();
        assert_eq!(&results[..3], &[None, None, None]);
        assert_eq!(results[3], Some(Code::ResourceExhausted));
        let status = call(&mut auth, Some("Bearer t")).err().unwrap();
        assert!(status.message().contains("3 requests per second"), "{}", status.message());
    }
}
