//! Encryption at rest: sealing a store record before it is written, opening it when read.
//!
//! Both stores, the files and the database rows, hand every record they write to a
//! [`Keyring`] built from `[store] encryption_keys`. With no keys the record is written as
//! plain JSON, exactly as before (the Python proxy reads those files). With keys, it becomes
//! an envelope:
//!
//! ```json
//! {"mcp_gateway_sealed": 1, "key_id": "k1", "nonce": "…", "ciphertext": "…"}
//! ```
//!
//! sealed with XChaCha20-Poly1305 under the first key, with a fresh random nonce per write
//! (its 192 bits make random nonces safe however many records are written). The slot's hash
//! and the record's kind are the associated data, so a record copied to another slot, or a
//! client record put in place of a tokens record, does not open; a sign-in in progress
//! ([`Keyring::seal_flow`]) is bound the same way to the digest of its `state`. Every configured key opens:
//! a record sealed under an older key still reads, and is sealed under the first key when
//! next written, which is how keys are rotated. A client registration is written only when a
//! client registers, so the stores [`Keyring::reseal`] it whenever they write the slot's
//! tokens. A plain record read while keys are set also
//! reads (that is how a store starts being encrypted) and is sealed when next written.

use std::borrow::Cow;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// The bytes of a key: 32, as XChaCha20-Poly1305 takes.
const KEY_BYTES: usize = 32;
const ENVELOPE_VERSION: u32 = 1;
/// The kind a sign-in in progress is sealed as; no slot record has it.
const FLOW_LABEL: &str = "sign-in";

/// Key material: never printed, compared in constant time.
#[derive(Clone)]
pub(crate) struct KeyMaterial(Box<[u8; KEY_BYTES]>);

impl KeyMaterial {
    /// Reads a key written as base64 (standard alphabet, padded), surrounding blanks ignored.
    pub(crate) fn from_base64(text: &str) -> Result<Self, KeyError> {
        // The decoder's own error quotes the offending character, which is key material.
        let bytes = BASE64
            .decode(text.trim())
            .map_err(|_| KeyError::NotBase64)?;
        let length = bytes.len();
        let bytes: [u8; KEY_BYTES] = bytes
            .try_into()
            .map_err(|_| KeyError::WrongLength { bytes: length })?;
        Ok(Self(Box::new(bytes)))
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl PartialEq for KeyMaterial {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&*other.0).into()
    }
}

impl Eq for KeyMaterial {}

/// One configured key: its id, written beside every record it seals, and its material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoreKey {
    pub(crate) id: String,
    pub(crate) material: KeyMaterial,
}

/// Why a key's text is not a key. Neither variant quotes the text.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("it is not base64; make a key with: openssl rand -base64 32")]
    NotBase64,
    #[error("it decodes to {bytes} bytes, not 32; make a key with: openssl rand -base64 32")]
    WrongLength { bytes: usize },
}

/// Which record of a slot: part of what a seal binds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecordKind {
    Tokens,
    Client,
}

impl RecordKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RecordKind::Tokens => "tokens",
            RecordKind::Client => "client",
        }
    }
}

/// Why a sealed record did not open. None quotes the record.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "it is sealed with encryption key `{key_id}`, which is not configured: add that key \
         to [store] encryption_keys"
    )]
    MissingKey { key_id: String },
    #[error(
        "it does not open with encryption key `{key_id}`: that key's material is not the \
         one it was sealed with, or the record was altered or copied from another slot"
    )]
    DoesNotOpen { key_id: String },
    #[error("its sealed envelope is malformed ({reason})")]
    Malformed { reason: &'static str },
}

/// A sealed record as written.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    mcp_gateway_sealed: u32,
    key_id: String,
    nonce: String,
    ciphertext: String,
}

/// Only the marker, to tell an envelope from a plain record before reading it whole.
#[derive(Deserialize)]
struct Marker {
    #[serde(rename = "mcp_gateway_sealed")]
    _marker: serde::de::IgnoredAny,
}

/// The configured keys; the first seals, all open. Empty means records stay plain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Keyring {
    keys: Vec<StoreKey>,
}

impl Keyring {
    pub(crate) fn new(keys: Vec<StoreKey>) -> Self {
        Self { keys }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The record as it is to be stored: pretty JSON, sealed when a key is configured.
    pub(crate) fn seal(
        &self,
        slot_hash: &str,
        kind: RecordKind,
        record: &impl Serialize,
    ) -> Result<Vec<u8>, serde_json::Error> {
        self.seal_bound(&associated_data(slot_hash, kind.as_str()), record)
    }

    /// A sign-in in progress as it is to be stored, like [`Keyring::seal`]: sealed to the
    /// digest of its `state`, so it opens under no other.
    pub(crate) fn seal_flow(
        &self,
        state_digest: &str,
        record: &impl Serialize,
    ) -> Result<Vec<u8>, serde_json::Error> {
        self.seal_bound(&associated_data(state_digest, FLOW_LABEL), record)
    }

    /// A sign-in in progress as [`Keyring::seal_flow`] stored it, opened like
    /// [`Keyring::open`].
    pub(crate) fn open_flow<'a>(
        &self,
        state_digest: &str,
        stored: &'a [u8],
    ) -> Result<Cow<'a, [u8]>, SealError> {
        self.open_bound(&associated_data(state_digest, FLOW_LABEL), stored)
    }

    /// `record` as JSON, sealed with `aad` as the associated data under the first key.
    fn seal_bound(
        &self,
        aad: &[u8],
        record: &impl Serialize,
    ) -> Result<Vec<u8>, serde_json::Error> {
        let plain = serde_json::to_vec_pretty(record)?;
        let Some(key) = self.keys.first() else {
            return Ok(plain);
        };
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let cipher = XChaCha20Poly1305::new((&*key.material.0).into());
        let payload = Payload { msg: &plain, aad };
        // Encryption fails only for messages of many gigabytes; a record is a few hundred bytes.
        let ciphertext = cipher
            .encrypt(&nonce, payload)
            .expect("a record is far below the cipher's length limit");
        serde_json::to_vec_pretty(&Envelope {
            mcp_gateway_sealed: ENVELOPE_VERSION,
            key_id: key.id.clone(),
            nonce: BASE64.encode(nonce),
            ciphertext: BASE64.encode(ciphertext),
        })
    }

    /// `stored` sealed under the first key, when keys are configured and it is sealed under
    /// another key or not at all; `None` when it needs nothing (or is not JSON, which its
    /// next reader reports). This is how a record that is read but rarely written (a client
    /// registration) moves to the current key.
    pub(crate) fn reseal(
        &self,
        slot_hash: &str,
        kind: RecordKind,
        stored: &[u8],
    ) -> Result<Option<Vec<u8>>, SealError> {
        let Some(current) = self.keys.first() else {
            return Ok(None);
        };
        let sealed_under = serde_json::from_slice::<Envelope>(stored)
            .ok()
            .map(|envelope| envelope.key_id);
        if sealed_under.as_deref() == Some(current.id.as_str()) {
            return Ok(None);
        }
        let plain = self.open(slot_hash, kind, stored)?;
        let Ok(record) = serde_json::from_slice::<serde_json::Value>(&plain) else {
            return Ok(None);
        };
        // Serialising a value that was just parsed cannot fail.
        Ok(self.seal(slot_hash, kind, &record).ok())
    }

    /// The record's plain JSON: `stored` itself when it is not sealed, else what it opens to.
    /// A stored text that is not JSON at all comes back as it is, for the caller to report.
    pub(crate) fn open<'a>(
        &self,
        slot_hash: &str,
        kind: RecordKind,
        stored: &'a [u8],
    ) -> Result<Cow<'a, [u8]>, SealError> {
        self.open_bound(&associated_data(slot_hash, kind.as_str()), stored)
    }

    fn open_bound<'a>(&self, aad: &[u8], stored: &'a [u8]) -> Result<Cow<'a, [u8]>, SealError> {
        if serde_json::from_slice::<Marker>(stored).is_err() {
            return Ok(Cow::Borrowed(stored));
        }
        let envelope: Envelope =
            serde_json::from_slice(stored).map_err(|_| SealError::Malformed {
                reason: "it needs exactly mcp_gateway_sealed, key_id, nonce and ciphertext",
            })?;
        if envelope.mcp_gateway_sealed != ENVELOPE_VERSION {
            let reason = "an envelope version this gateway does not know";
            return Err(SealError::Malformed { reason });
        }
        let key = self
            .keys
            .iter()
            .find(|key| key.id == envelope.key_id)
            .ok_or_else(|| SealError::MissingKey {
                key_id: envelope.key_id.clone(),
            })?;
        open_envelope(key, &envelope, aad).map(Cow::Owned)
    }
}

fn open_envelope(key: &StoreKey, envelope: &Envelope, aad: &[u8]) -> Result<Vec<u8>, SealError> {
    let malformed = |reason| SealError::Malformed { reason };
    let nonce = BASE64
        .decode(&envelope.nonce)
        .map_err(|_| malformed("its nonce is not base64"))?;
    if nonce.len() != 24 {
        return Err(malformed("its nonce is not 24 bytes"));
    }
    let ciphertext = BASE64
        .decode(&envelope.ciphertext)
        .map_err(|_| malformed("its ciphertext is not base64"))?;
    let cipher = XChaCha20Poly1305::new((&*key.material.0).into());
    let payload = Payload {
        msg: &ciphertext,
        aad,
    };
    cipher
        .decrypt(XNonce::from_slice(&nonce), payload)
        .map_err(|_| SealError::DoesNotOpen {
            key_id: key.id.clone(),
        })
}

/// What a seal binds besides the record: the format, the slot and the kind of record.
/// What a seal binds a record to: the envelope version, the slot's hash (or a sign-in's
/// state digest) and what kind of record it is.
fn associated_data(binding: &str, label: &str) -> Vec<u8> {
    format!("mcp-u2m-gateway/v{ENVELOPE_VERSION}\n{binding}\n{label}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOT: &str = "3fd85590b9b16938";

    fn key(id: &str, byte: u8) -> StoreKey {
        let text = BASE64.encode([byte; KEY_BYTES]);
        StoreKey {
            id: id.to_owned(),
            material: KeyMaterial::from_base64(&text).expect("a valid key"),
        }
    }

    fn record() -> serde_json::Value {
        serde_json::json!({"access_token": "at-SECRET", "refresh_token": "rt-SECRET"})
    }

    fn opened(keyring: &Keyring, slot: &str, kind: RecordKind, stored: &[u8]) -> serde_json::Value {
        let plain = keyring.open(slot, kind, stored).expect("opens");
        serde_json::from_slice(&plain).expect("json")
    }

    #[test]
    fn a_sealed_flow_opens_only_under_its_own_state_digest() {
        let keyring = Keyring::new(vec![key("k1", 1)]);
        let digest = "ab".repeat(32);
        let stored = keyring.seal_flow(&digest, &record()).expect("seal");
        let text = String::from_utf8_lossy(&stored);
        assert!(!text.contains("SECRET"), "{text}");
        let plain = keyring.open_flow(&digest, &stored).expect("opens");
        let opened: serde_json::Value = serde_json::from_slice(&plain).expect("json");
        assert_eq!(opened, record());
        let elsewhere = keyring.open_flow(&"cd".repeat(32), &stored);
        assert!(matches!(elsewhere, Err(SealError::DoesNotOpen { .. })));
        let as_slot_record = keyring.open(&digest, RecordKind::Tokens, &stored);
        assert!(matches!(as_slot_record, Err(SealError::DoesNotOpen { .. })));
    }

    #[test]
    fn without_keys_records_stay_plain_pretty_json() {
        let keyring = Keyring::default();
        let stored = keyring
            .seal(SLOT, RecordKind::Tokens, &record())
            .expect("seal");
        assert_eq!(stored, serde_json::to_vec_pretty(&record()).expect("json"));
        assert_eq!(
            opened(&keyring, SLOT, RecordKind::Tokens, &stored),
            record()
        );
    }

    #[test]
    fn a_sealed_record_hides_its_tokens_and_opens_again() {
        let keyring = Keyring::new(vec![key("k1", 1)]);
        let stored = keyring
            .seal(SLOT, RecordKind::Tokens, &record())
            .expect("seal");
        let text = String::from_utf8(stored.clone()).expect("utf-8");
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains(r#""key_id": "k1""#), "{text}");
        assert_eq!(
            opened(&keyring, SLOT, RecordKind::Tokens, &stored),
            record()
        );
    }

    #[test]
    fn each_write_uses_a_fresh_nonce() {
        let keyring = Keyring::new(vec![key("k1", 1)]);
        let first = keyring
            .seal(SLOT, RecordKind::Tokens, &record())
            .expect("seal");
        let second = keyring
            .seal(SLOT, RecordKind::Tokens, &record())
            .expect("seal");
        assert_ne!(first, second);
    }

    #[test]
    fn a_record_copied_to_another_slot_or_kind_does_not_open() {
        let keyring = Keyring::new(vec![key("k1", 1)]);
        let stored = keyring
            .seal(SLOT, RecordKind::Tokens, &record())
            .expect("seal");
        let elsewhere = keyring.open("0123456789abcdef", RecordKind::Tokens, &stored);
        assert!(matches!(elsewhere, Err(SealError::DoesNotOpen { key_id }) if key_id == "k1"));
        let as_client = keyring.open(SLOT, RecordKind::Client, &stored);
        assert!(matches!(as_client, Err(SealError::DoesNotOpen { .. })));
    }

    #[test]
    fn an_old_key_kept_second_still_opens_and_the_first_seals() {
        let old = Keyring::new(vec![key("k1", 1)]);
        let stored = old.seal(SLOT, RecordKind::Client, &record()).expect("seal");
        let rotated = Keyring::new(vec![key("k2", 2), key("k1", 1)]);
        assert_eq!(
            opened(&rotated, SLOT, RecordKind::Client, &stored),
            record()
        );
        let resealed = rotated
            .seal(SLOT, RecordKind::Client, &record())
            .expect("seal");
        assert!(String::from_utf8_lossy(&resealed).contains(r#""key_id": "k2""#));
        let missing = old.open(SLOT, RecordKind::Client, &resealed);
        assert!(matches!(missing, Err(SealError::MissingKey { key_id }) if key_id == "k2"));
    }

    #[test]
    fn reseal_moves_old_and_plain_records_to_the_first_key_and_leaves_current_ones() {
        let old = Keyring::new(vec![key("k1", 1)]);
        let rotated = Keyring::new(vec![key("k2", 2), key("k1", 1)]);
        let under_old = old.seal(SLOT, RecordKind::Client, &record()).expect("seal");
        let resealed = rotated
            .reseal(SLOT, RecordKind::Client, &under_old)
            .expect("opens")
            .expect("needs resealing");
        assert!(String::from_utf8_lossy(&resealed).contains(r#""key_id": "k2""#));
        let only_new = Keyring::new(vec![key("k2", 2)]);
        assert_eq!(
            opened(&only_new, SLOT, RecordKind::Client, &resealed),
            record()
        );
        assert!(
            rotated
                .reseal(SLOT, RecordKind::Client, &resealed)
                .expect("ok")
                .is_none()
        );

        let plain = serde_json::to_vec(&record()).expect("json");
        let sealed = rotated
            .reseal(SLOT, RecordKind::Client, &plain)
            .expect("ok");
        assert!(sealed.is_some_and(|bytes| !String::from_utf8_lossy(&bytes).contains("SECRET")));
        assert!(
            Keyring::default()
                .reseal(SLOT, RecordKind::Client, &under_old)
                .expect("ok")
                .is_none()
        );
        assert!(
            rotated
                .reseal(SLOT, RecordKind::Client, b"{\"broken")
                .expect("ok")
                .is_none()
        );
    }

    #[test]
    fn a_reader_without_the_key_is_told_which_key_id_it_needs() {
        let stored = Keyring::new(vec![key("prod-2026", 7)])
            .seal(SLOT, RecordKind::Tokens, &record())
            .expect("seal");
        let error = Keyring::default()
            .open(SLOT, RecordKind::Tokens, &stored)
            .expect_err("no key");
        let shown = error.to_string();
        assert!(
            shown.contains("`prod-2026`") && shown.contains("encryption_keys"),
            "{shown}"
        );
    }

    #[test]
    fn a_key_of_the_same_id_but_other_material_does_not_open() {
        let stored = Keyring::new(vec![key("k1", 1)])
            .seal(SLOT, RecordKind::Tokens, &record())
            .expect("seal");
        let other = Keyring::new(vec![key("k1", 9)]).open(SLOT, RecordKind::Tokens, &stored);
        assert!(matches!(other, Err(SealError::DoesNotOpen { .. })));
    }

    #[test]
    fn plain_records_and_non_json_pass_through_for_the_caller() {
        let keyring = Keyring::new(vec![key("k1", 1)]);
        let plain = br#"{"access_token": "at"}"#;
        assert_eq!(
            &*keyring
                .open(SLOT, RecordKind::Tokens, plain)
                .expect("plain"),
            plain
        );
        let garbage = b"{\"access_tok";
        assert_eq!(
            &*keyring
                .open(SLOT, RecordKind::Tokens, garbage)
                .expect("raw"),
            garbage
        );
    }

    #[test]
    fn a_damaged_envelope_is_malformed_without_quoting_it() {
        let keyring = Keyring::new(vec![key("k1", 1)]);
        let damaged =
            br#"{"mcp_gateway_sealed": 1, "key_id": "k1", "nonce": "!!", "ciphertext": "SECRET"}"#;
        let error = keyring
            .open(SLOT, RecordKind::Tokens, damaged)
            .expect_err("damaged");
        assert!(matches!(error, SealError::Malformed { .. }));
        assert!(!error.to_string().contains("SECRET"));
    }

    #[test]
    fn key_text_must_be_base64_of_32_bytes_and_errors_never_quote_it() {
        let short = BASE64.encode([3u8; 16]);
        let error = KeyMaterial::from_base64(&short).expect_err("short");
        assert!(matches!(error, KeyError::WrongLength { bytes: 16 }));
        let error = KeyMaterial::from_base64("SECRET*not-base64").expect_err("bad");
        assert!(!error.to_string().contains("SECRET") && !error.to_string().contains('*'));
        let padded = format!("  {}\n", BASE64.encode([3u8; 32]));
        KeyMaterial::from_base64(&padded).expect("blanks around a key are fine");
    }

    #[test]
    fn key_material_debug_prints_redacted() {
        let key = key("k1", 0x41);
        let shown = format!(
            "{key:?} {:?} {:#?}",
            key.material,
            Keyring::new(vec![key.clone()])
        );
        assert!(
            shown.contains("[redacted]") && shown.contains("k1"),
            "{shown}"
        );
        let encoded = BASE64.encode([0x41u8; KEY_BYTES]);
        assert!(
            !shown.contains(&encoded[..8]) && !shown.contains("65, 65"),
            "{shown}"
        );
    }
}
