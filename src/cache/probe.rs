//! Probe tokens: what an EXPLORE hands the gateway and its Store hands back, so the server can
//! learn from a judged lookup without keeping state per explore.
//!
//! A token carries the probed entry, the lookup's features and an expiry, bound to the
//! namespace and the query, and is signed with HMAC-SHA256 under a key kept in the data dir.
//! It cannot be forged or moved to another namespace or query, and the cache records its
//! nonce when it is used (durably, in the batch that learns from it) so it is honoured once.

use super::learner::Features;
use super::ValidationError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use sha2::Sha256;
use std::collections::HashMap;

const VERSION: u8 = 1;
/// version, nonce, entry, namespace tag, query id, expiry, similarity, margin, agreeing,
/// audit's P(wrong).
const PAYLOAD: usize = 1 + 8 + 8 + 8 + 8 + 8 + 4 + 4 + 1 + 4;
/// Truncated HMAC: 128 bits is far beyond guessing within a token's lifetime.
const TAG: usize = 16;

/// What a valid token says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probe {
    pub nonce: u64,
    pub entry: u64,
    pub query: u64,
    pub expires_at_unix_ms: i64,
    pub features: Features,
    /// An audit's P(wrong) as the model gave it; 0 for an ordinary explore.
    pub audit_p_wrong: f32,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProbeError {
    #[error("probe_token is not a token this server issued (malformed, truncated or altered); send it exactly as the Lookup returned it")]
    Forged,
    #[error("probe_token was issued by a Lookup in another namespace; send it with a Store to that namespace")]
    OtherNamespace,
    #[error("probe_token was issued for another query; send the query that was looked up with it")]
    OtherQuery,
    #[error("probe_token expired {ago_ms} ms ago (tokens live {ttl_s} s, --probe-ttl-seconds); store without it, or look up again for a fresh one")]
    Expired { ago_ms: i64, ttl_s: u64 },
    #[error("probe_token was already used by an earlier Store; each token teaches once, store without it")]
    Used,
}

impl ProbeError {
    /// Whether the token itself is wrong (INVALID_ARGUMENT) rather than no longer usable
    /// (FAILED_PRECONDITION).
    pub fn is_invalid(&self) -> bool {
        matches!(self, Self::Forged | Self::OtherNamespace | Self::OtherQuery)
    }

    pub fn to_validation(&self) -> ValidationError {
        ValidationError::new("probe_token", "is refused", self.to_string())
    }
}

pub struct Signer {
    key: [u8; 32],
    ttl_ms: i64,
    nonces: Mutex<crate::rng::SplitMix64>,
    /// Used nonces until they expire (loaded from RocksDB at start).
    used: Mutex<HashMap<u64, i64>>,
}

fn namespace_tag(key: &[u8; 32], namespace: &str) -> u64 {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(b"namespace\0");
    mac.update(namespace.as_bytes());
    u64::from_be_bytes(mac.finalize().into_bytes()[..8].try_into().expect("8 bytes"))
}

impl Signer {
    pub fn new(key: [u8; 32], ttl_seconds: u64, used: Vec<(u64, i64)>) -> Self {
        let mut seed = [0u8; 8];
        // The nonce only has to be unique; a fallback seed from the key keeps it so when the
        // OS has no randomness to give.
        if getrandom::fill(&mut seed).is_err() {
            seed.copy_from_slice(&key[..8]);
        }
        Self {
            key,
            ttl_ms: i64::try_from(ttl_seconds.saturating_mul(1000)).unwrap_or(i64::MAX),
            nonces: Mutex::new(crate::rng::SplitMix64::new(u64::from_be_bytes(seed))),
            used: Mutex::new(used.into_iter().collect()),
        }
    }

    fn mac(&self, namespace: &str, payload: &[u8]) -> [u8; TAG] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(payload);
        mac.update(namespace.as_bytes());
        mac.finalize().into_bytes()[..TAG].try_into().expect("TAG bytes")
    }

    pub fn issue(
        &self,
        namespace: &str,
        entry: u64,
        query: u64,
        features: Features,
        audit_p_wrong: f32,
        now: i64,
    ) -> String {
        let nonce = self.nonces.lock().next_u64();
        let mut p = Vec::with_capacity(PAYLOAD + TAG);
        p.push(VERSION);
        p.extend_from_slice(&nonce.to_be_bytes());
        p.extend_from_slice(&entry.to_be_bytes());
        p.extend_from_slice(&namespace_tag(&self.key, namespace).to_be_bytes());
        p.extend_from_slice(&query.to_be_bytes());
        p.extend_from_slice(&now.saturating_add(self.ttl_ms).to_be_bytes());
        p.extend_from_slice(&features.similarity.to_be_bytes());
        p.extend_from_slice(&features.margin.to_be_bytes());
        p.push(features.agreeing.min(255) as u8);
        p.extend_from_slice(&audit_p_wrong.to_be_bytes());
        let tag = self.mac(namespace, &p);
        p.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(p)
    }

    /// Checks a token for a Store of `query` to `namespace` at `now`, without using it.
    pub fn open(&self, namespace: &str, query: u64, token: &str, now: i64) -> Result<Probe, ProbeError> {
        let bytes = URL_SAFE_NO_PAD.decode(token.trim()).map_err(|_| ProbeError::Forged)?;
        if bytes.len() != PAYLOAD + TAG || bytes[0] != VERSION {
            return Err(ProbeError::Forged);
        }
        let (payload, tag) = bytes.split_at(PAYLOAD);
        let u64_at = |i: usize| u64::from_be_bytes(payload[i..i + 8].try_into().expect("8 bytes"));
        let f32_at = |i: usize| f32::from_be_bytes(payload[i..i + 4].try_into().expect("4 bytes"));
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(payload);
        mac.update(namespace.as_bytes());
        if mac.verify_truncated_left(tag).is_err() {
            // Signed, but for another namespace: the tag in the payload says so.
            let signed_elsewhere = u64_at(17) != namespace_tag(&self.key, namespace);
            return Err(if signed_elsewhere { ProbeError::OtherNamespace } else { ProbeError::Forged });
        }
        let probe = Probe {
            nonce: u64_at(1),
            entry: u64_at(9),
            query: u64_at(25),
            expires_at_unix_ms: u64_at(33) as i64,
            features: Features { similarity: f32_at(41), margin: f32_at(45), agreeing: u32::from(payload[49]) },
            audit_p_wrong: f32_at(50),
        };
        if probe.query != query {
            return Err(ProbeError::OtherQuery);
        }
        if now >= probe.expires_at_unix_ms {
            return Err(ProbeError::Expired {
                ago_ms: now - probe.expires_at_unix_ms,
                ttl_s: (self.ttl_ms / 1000) as u64,
            });
        }
        if self.used.lock().contains_key(&probe.nonce) {
            return Err(ProbeError::Used);
        }
        Ok(probe)
    }

    /// Claims a token's nonce; `Used` if another Store claimed it first. The claim is undone
    /// with [`Signer::release`] when the batch that records it fails.
    pub fn claim(&self, probe: &Probe) -> Result<(), ProbeError> {
        match self.used.lock().entry(probe.nonce) {
            std::collections::hash_map::Entry::Occupied(_) => Err(ProbeError::Used),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(probe.expires_at_unix_ms);
                Ok(())
            }
        }
    }

    pub fn release(&self, probe: &Probe) {
        self.used.lock().remove(&probe.nonce);
    }

    /// Used nonces that have expired: they need no record any more (the expiry refuses them).
    pub fn expired(&self, now: i64) -> Vec<u64> {
        let mut used = self.used.lock();
        let gone: Vec<u64> = used.iter().filter(|(_, at)| **at <= now).map(|(n, _)| *n).collect();
        gone.iter().for_each(|n| {
            used.remove(n);
        });
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features() -> Features {
        Features { similarity: 0.91, margin: 0.12, agreeing: 3 }
    }

    #[test]
    fn a_token_opens_once_and_only_where_it_was_issued() {
        let signer = Signer::new([7; 32], 60, Vec::new());
        let token = signer.issue("support", 42, 99, features(), 0.0, 1_000);
        let probe = signer.open("support", 99, &token, 2_000).unwrap();
        assert_eq!((probe.entry, probe.query, probe.features), (42, 99, features()));
        assert_eq!(signer.open("billing", 99, &token, 2_000), Err(ProbeError::OtherNamespace));
        assert_eq!(signer.open("support", 98, &token, 2_000), Err(ProbeError::OtherQuery));
        assert!(matches!(signer.open("support", 99, &token, 61_000), Err(ProbeError::Expired { .. })));
        signer.claim(&probe).unwrap();
        assert_eq!(signer.open("support", 99, &token, 2_000), Err(ProbeError::Used));
        assert_eq!(signer.claim(&probe), Err(ProbeError::Used));
        signer.release(&probe);
        assert!(signer.open("support", 99, &token, 2_000).is_ok(), "a failed write gives the token back");
        assert_eq!(signer.expired(61_000), Vec::<u64>::new(), "released: nothing to forget");
    }

    #[test]
    fn altered_or_foreign_tokens_are_forged() {
        let signer = Signer::new([7; 32], 60, Vec::new());
        let token = signer.issue("support", 42, 99, features(), 0.0, 1_000);
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        bytes[10] ^= 1; // another entry id
        assert_eq!(signer.open("support", 99, &URL_SAFE_NO_PAD.encode(&bytes), 2_000), Err(ProbeError::Forged));
        assert_eq!(signer.open("support", 99, "not a token", 2_000), Err(ProbeError::Forged));
        assert_eq!(signer.open("support", 99, &token[..20], 2_000), Err(ProbeError::Forged));
        let other_server = Signer::new([8; 32], 60, Vec::new());
        assert!(other_server.open("support", 99, &token, 2_000).is_err());
    }

    #[test]
    fn used_nonces_survive_a_restart_until_they_expire() {
        let signer = Signer::new([7; 32], 60, Vec::new());
        let token = signer.issue("support", 42, 99, features(), 0.0, 1_000);
        let probe = signer.open("support", 99, &token, 2_000).unwrap();
        let restarted = Signer::new([7; 32], 60, vec![(probe.nonce, probe.expires_at_unix_ms)]);
        assert_eq!(restarted.open("support", 99, &token, 2_000), Err(ProbeError::Used));
        assert_eq!(restarted.expired(61_000), vec![probe.nonce]);
    }
}
