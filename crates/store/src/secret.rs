//! Credentials at rest: envelope encryption with AES-256-GCM.
//!
//! Each credential gets its own random data key (DEK); the DEK is wrapped by a
//! key-encryption key (KEK) whose id is stored next to the ciphertext, so a KEK can be
//! rotated later by re-wrapping DEKs without touching the secrets themselves. Both layers
//! bind the repository id and key id as associated data, so a row copied onto another
//! repository does not decrypt.

use crate::StoreError;
use crate::private_fs::{self, PRIVATE_DIR_MODE, PRIVATE_FILE_MODE};
use aes_gcm::aead::{Aead, Generate, Nonce, Payload};
use aes_gcm::{Aes256Gcm, KeyInit};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

pub const ENV_KEY_ID: &str = "DEK_ACTIVE_KEY_ID";
pub const ENV_KEY: &str = "DEK_ACTIVE_ENCRYPTION_TOKEN";
/// Key id of the KEK generated for the embedded mode when no environment key is given.
pub const LOCAL_KEY_ID: &str = "local-1";
/// Key id used when `DEK_ACTIVE_ENCRYPTION_TOKEN` is set without `DEK_ACTIVE_KEY_ID`.
pub const DEFAULT_ENV_KEY_ID: &str = "env-1";

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;

type Kek = Zeroizing<[u8; KEY_LEN]>;

/// Secret material (a token, a password, a private key). Wiped from memory on drop and
/// never printed, so it can travel through structs that derive `Debug` without leaking.
#[derive(Clone, Default, Zeroize, ZeroizeOnDrop)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The secret in clear: call it only where the secret is about to be used.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for SecretBytes {
    fn from(s: &str) -> Self {
        Self(s.as_bytes().to_vec())
    }
}

impl From<String> for SecretBytes {
    fn from(s: String) -> Self {
        Self(s.into_bytes())
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(v: Vec<u8>) -> Self {
        Self(v)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A credential as it is stored: nothing here is secret without a KEK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedCredential {
    pub key_id: String,
    /// Nonce followed by the AES-GCM encryption of the data key under the KEK.
    pub wrapped_key: Vec<u8>,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// Holds the active KEK (used to seal) and any older ones (still able to open).
pub struct CredentialCipher {
    active_id: String,
    keys: BTreeMap<String, Zeroizing<[u8; KEY_LEN]>>,
}

impl fmt::Debug for CredentialCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialCipher")
            .field("active_key_id", &self.active_id)
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl CredentialCipher {
    /// A cipher whose active KEK is `kek` (exactly 32 bytes) under `key_id`.
    pub fn new(key_id: &str, kek: &[u8]) -> Result<Self, StoreError> {
        validate_key_id(key_id).map_err(|reason| StoreError::Crypto(reason.to_string()))?;
        let key = to_key(kek).ok_or_else(|| {
            StoreError::Crypto(format!(
                "key-encryption key {key_id:?} must be {KEY_LEN} bytes, got {}",
                kek.len()
            ))
        })?;
        let mut keys = BTreeMap::new();
        keys.insert(key_id.to_string(), key);
        Ok(Self {
            active_id: key_id.to_string(),
            keys,
        })
    }

    /// Adds a KEK that can still open credentials sealed under it (key rotation).
    pub fn with_decrypt_key(mut self, key_id: &str, kek: &[u8]) -> Result<Self, StoreError> {
        validate_key_id(key_id).map_err(|reason| StoreError::Crypto(reason.to_string()))?;
        let key = to_key(kek).ok_or_else(|| {
            StoreError::Crypto(format!(
                "key-encryption key {key_id:?} must be {KEY_LEN} bytes, got {}",
                kek.len()
            ))
        })?;
        self.keys.entry(key_id.to_string()).or_insert(key);
        Ok(self)
    }

    /// From `DEK_ACTIVE_ENCRYPTION_TOKEN` / `DEK_ACTIVE_KEY_ID`, or else from the key file the
    /// embedded mode keeps (and creates on first start) under `<data_dir>/keys/`.
    pub fn from_env(data_dir: &Path) -> Result<Self, StoreError> {
        Self::from_lookup(|name| std::env::var(name).ok(), data_dir)
    }

    /// Like [`from_env`](Self::from_env) with the environment supplied by the caller, so
    /// tests and tools need not mutate the process environment.
    pub fn from_lookup(
        env: impl Fn(&str) -> Option<String>,
        data_dir: &Path,
    ) -> Result<Self, StoreError> {
        let non_empty = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let token = non_empty(ENV_KEY).map(Zeroizing::new);
        let key_id = non_empty(ENV_KEY_ID);
        let keys_dir = data_dir.join("keys");
        let mut cipher = match (token, key_id) {
            (Some(token), key_id) => {
                let key_id = key_id.unwrap_or_else(|| DEFAULT_ENV_KEY_ID.to_string());
                let key_id = key_id.trim();
                validate_key_id(key_id).map_err(|reason| StoreError::Config {
                    variable: ENV_KEY_ID,
                    reason: reason.to_string(),
                })?;
                let kek = decode_key(token.trim()).map_err(|reason| StoreError::Config {
                    variable: ENV_KEY,
                    reason,
                })?;
                Self::new(key_id, &kek[..])?
            }
            (None, Some(_)) => {
                return Err(StoreError::Config {
                    variable: ENV_KEY,
                    reason: format!(
                        "{ENV_KEY_ID} is set but {ENV_KEY} is not; set both, or neither to use \
                         the embedded key file"
                    ),
                });
            }
            (None, None) => {
                let kek = load_or_create_key_file(&keys_dir, LOCAL_KEY_ID)?;
                Self::new(LOCAL_KEY_ID, &kek[..])?
            }
        };
        // Older local keys stay usable for decryption so a switch to an environment key
        // does not strand credentials sealed before it.
        for (id, kek) in existing_key_files(&keys_dir)? {
            cipher = cipher.with_decrypt_key(&id, &kek[..])?;
        }
        Ok(cipher)
    }

    pub fn active_key_id(&self) -> &str {
        &self.active_id
    }

    /// Encrypts `plaintext` under a fresh data key; `context` is bound as associated data
    /// and must be given again to open.
    pub fn seal(
        &self,
        context: &[u8],
        plaintext: &SecretBytes,
    ) -> Result<SealedCredential, StoreError> {
        let kek = self
            .keys
            .get(&self.active_id)
            .ok_or_else(|| StoreError::Crypto("the active key is missing".into()))?;
        let dek: Zeroizing<[u8; KEY_LEN]> = Zeroizing::new(random()?);
        let nonce = Nonce::<Aes256Gcm>::try_generate().map_err(rng_error)?;
        let ciphertext = aead(&dek[..])?
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.expose(),
                    aad: context,
                },
            )
            .map_err(|_| StoreError::Crypto("encryption failed".into()))?;
        let wrap_nonce = Nonce::<Aes256Gcm>::try_generate().map_err(rng_error)?;
        let wrap_aad = wrap_context(&self.active_id, context);
        let wrapped = aead(&kek[..])?
            .encrypt(
                &wrap_nonce,
                Payload {
                    msg: &dek[..],
                    aad: &wrap_aad,
                },
            )
            .map_err(|_| StoreError::Crypto("wrapping the data key failed".into()))?;
        let mut wrapped_key = wrap_nonce.to_vec();
        wrapped_key.extend_from_slice(&wrapped);
        Ok(SealedCredential {
            key_id: self.active_id.clone(),
            wrapped_key,
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Decrypts a credential sealed with the same `context`. Fails with a message naming
    /// the key id when the KEK is unknown or wrong.
    pub fn open(
        &self,
        context: &[u8],
        sealed: &SealedCredential,
    ) -> Result<SecretBytes, StoreError> {
        let kek = self.keys.get(&sealed.key_id).ok_or_else(|| {
            StoreError::Crypto(format!(
                "credential was encrypted with key {:?}, which is not configured (set \
                 {ENV_KEY_ID} and {ENV_KEY} to that key)",
                sealed.key_id
            ))
        })?;
        if sealed.wrapped_key.len() <= NONCE_LEN {
            return Err(StoreError::Crypto("wrapped data key is truncated".into()));
        }
        let (wrap_nonce, wrapped) = sealed.wrapped_key.split_at(NONCE_LEN);
        let wrap_nonce = Nonce::<Aes256Gcm>::try_from(wrap_nonce)
            .map_err(|_| StoreError::Crypto("bad wrapping nonce".into()))?;
        let wrap_aad = wrap_context(&sealed.key_id, context);
        let dek = Zeroizing::new(
            aead(&kek[..])?
                .decrypt(
                    &wrap_nonce,
                    Payload {
                        msg: wrapped,
                        aad: &wrap_aad,
                    },
                )
                .map_err(|_| {
                    StoreError::Crypto(format!(
                        "cannot decrypt credential: key-encryption key {:?} does not match the \
                         one it was sealed with (wrong {ENV_KEY}?) or the data was tampered with",
                        sealed.key_id
                    ))
                })?,
        );
        let nonce = Nonce::<Aes256Gcm>::try_from(sealed.nonce.as_slice())
            .map_err(|_| StoreError::Crypto("bad credential nonce".into()))?;
        let plaintext = aead(&dek[..])?
            .decrypt(
                &nonce,
                Payload {
                    msg: &sealed.ciphertext,
                    aad: context,
                },
            )
            .map_err(|_| {
                StoreError::Crypto("cannot decrypt credential: ciphertext was tampered with".into())
            })?;
        Ok(SecretBytes::new(plaintext))
    }
}

fn aead(key: &[u8]) -> Result<Aes256Gcm, StoreError> {
    Aes256Gcm::new_from_slice(key).map_err(|_| StoreError::Crypto("invalid key length".into()))
}

fn wrap_context(key_id: &str, context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(key_id.len() + 1 + context.len());
    aad.extend_from_slice(key_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(context);
    aad
}

fn rng_error(e: impl fmt::Display) -> StoreError {
    StoreError::Crypto(format!("the system random generator failed: {e}"))
}

fn random<const N: usize>() -> Result<[u8; N], StoreError> {
    <[u8; N]>::try_generate().map_err(rng_error)
}

fn to_key(bytes: &[u8]) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    let arr: [u8; KEY_LEN] = bytes.try_into().ok()?;
    Some(Zeroizing::new(arr))
}

/// Key ids become file names and AAD, so keep them plain.
fn validate_key_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() || id.len() > 64 {
        return Err("key id must be 1–64 characters");
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || id.starts_with('.')
    {
        return Err("key id may only contain letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

fn decode_key(text: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, String> {
    let bytes = Zeroizing::new(
        BASE64
            .decode(text)
            .map_err(|_| "must be base64 (standard alphabet, padded)".to_string())?,
    );
    to_key(&bytes).ok_or_else(|| {
        format!(
            "must decode to {KEY_LEN} bytes, got {} (generate one with `openssl rand -base64 32`)",
            bytes.len()
        )
    })
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn key_path(keys_dir: &Path, id: &str) -> PathBuf {
    keys_dir.join(format!("{id}.key"))
}

fn read_key_file(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>, StoreError> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io_err(path))?);
    decode_key(text.trim()).map_err(|reason| {
        StoreError::Crypto(format!("key file {} is invalid: {reason}", path.display()))
    })
}

fn existing_key_files(keys_dir: &Path) -> Result<Vec<(String, Kek)>, StoreError> {
    let entries = match std::fs::read_dir(keys_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(keys_dir)(e)),
    };
    private_fs::tighten(keys_dir, PRIVATE_DIR_MODE)?;
    let mut keys = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_err(keys_dir))?.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".key"))
        else {
            continue;
        };
        if validate_key_id(id).is_ok() {
            private_fs::tighten(&path, PRIVATE_FILE_MODE)?;
            keys.push((id.to_string(), read_key_file(&path)?));
        }
    }
    Ok(keys)
}

fn load_or_create_key_file(
    keys_dir: &Path,
    id: &str,
) -> Result<Zeroizing<[u8; KEY_LEN]>, StoreError> {
    let path = key_path(keys_dir, id);
    if path.exists() {
        private_fs::tighten(keys_dir, PRIVATE_DIR_MODE)?;
        private_fs::tighten(&path, PRIVATE_FILE_MODE)?;
        return read_key_file(&path);
    }
    // The data directory too, if the key is the first thing in it: it is where the
    // database and artifacts go next.
    if let Some(data_dir) = keys_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        private_fs::create_private_dir_if_missing(data_dir)?;
    }
    private_fs::ensure_private_dir(keys_dir)?;
    let key: Zeroizing<[u8; KEY_LEN]> = Zeroizing::new(random()?);
    let encoded = Zeroizing::new(BASE64.encode(&key[..]));
    // Written to a temporary name and renamed, so a crash never leaves a truncated key that
    // would make every stored credential unreadable.
    let tmp = keys_dir.join(format!(".{id}.key.tmp"));
    let _ = std::fs::remove_file(&tmp);
    {
        let mut file = private_fs::new_private_file(&tmp)?;
        file.write_all(encoded.as_bytes()).map_err(io_err(&tmp))?;
        file.write_all(b"\n").map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    tracing::info!(path = %path.display(), key_id = id, "generated a key-encryption key for credentials");
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = SecretBytes::from("hunter2");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(s.expose(), b"hunter2");
    }

    #[test]
    fn seal_open_round_trip_and_context_binding() {
        let c = CredentialCipher::new("k1", &[7u8; 32]).unwrap();
        let sealed = c.seal(b"repo-a", &SecretBytes::from("tok")).unwrap();
        assert_eq!(sealed.key_id, "k1");
        assert!(!sealed.ciphertext.windows(3).any(|w| w == b"tok"));
        assert_eq!(c.open(b"repo-a", &sealed).unwrap().expose(), b"tok");
        assert!(c.open(b"repo-b", &sealed).is_err());
        // Fresh data key and nonce every time.
        let again = c.seal(b"repo-a", &SecretBytes::from("tok")).unwrap();
        assert_ne!(again.ciphertext, sealed.ciphertext);
        assert_ne!(again.wrapped_key, sealed.wrapped_key);
    }

    #[test]
    fn wrong_or_unknown_kek_fails_clearly() {
        let sealed = CredentialCipher::new("k1", &[1u8; 32])
            .unwrap()
            .seal(b"r", &SecretBytes::from("x"))
            .unwrap();
        let wrong = CredentialCipher::new("k1", &[2u8; 32]).unwrap();
        let e = wrong.open(b"r", &sealed).unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
        let other = CredentialCipher::new("k2", &[1u8; 32]).unwrap();
        let e = other.open(b"r", &sealed).unwrap_err().to_string();
        assert!(e.contains("\"k1\"") && e.contains("not configured"), "{e}");
    }

    #[test]
    fn rotation_keeps_old_keys_for_decryption() {
        let old = CredentialCipher::new("old", &[1u8; 32]).unwrap();
        let sealed = old.seal(b"r", &SecretBytes::from("x")).unwrap();
        let new = CredentialCipher::new("new", &[2u8; 32])
            .unwrap()
            .with_decrypt_key("old", &[1u8; 32])
            .unwrap();
        assert_eq!(new.active_key_id(), "new");
        assert_eq!(new.open(b"r", &sealed).unwrap().expose(), b"x");
        assert_eq!(
            new.seal(b"r", &SecretBytes::from("x")).unwrap().key_id,
            "new"
        );
    }

    #[test]
    fn env_key_is_used_and_validated() {
        let dir = tempfile::tempdir().unwrap();
        let token = BASE64.encode([9u8; 32]);
        let c = CredentialCipher::from_lookup(
            env(&[(ENV_KEY, &token), (ENV_KEY_ID, "prod-2024")]),
            dir.path(),
        )
        .unwrap();
        assert_eq!(c.active_key_id(), "prod-2024");
        assert!(
            !dir.path().join("keys").exists(),
            "no key file with an env key"
        );

        let c = CredentialCipher::from_lookup(env(&[(ENV_KEY, &token)]), dir.path()).unwrap();
        assert_eq!(c.active_key_id(), DEFAULT_ENV_KEY_ID);

        for (vars, variable) in [
            (vec![(ENV_KEY, "not base64!")], ENV_KEY),
            (vec![(ENV_KEY, "c2hvcnQ=")], ENV_KEY),
            (vec![(ENV_KEY_ID, "k")], ENV_KEY),
            (
                vec![(ENV_KEY, token.as_str()), (ENV_KEY_ID, "../etc")],
                ENV_KEY_ID,
            ),
        ] {
            match CredentialCipher::from_lookup(env(&vars), dir.path()) {
                Err(StoreError::Config { variable: v, .. }) => assert_eq!(v, variable),
                other => panic!("expected a config error naming {variable}, got {other:?}"),
            }
        }
    }

    #[test]
    fn embedded_key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = CredentialCipher::from_lookup(|_| None, dir.path()).unwrap();
        assert_eq!(first.active_key_id(), LOCAL_KEY_ID);
        let path = dir.path().join("keys").join("local-1.key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let sealed = first.seal(b"r", &SecretBytes::from("x")).unwrap();
        let second = CredentialCipher::from_lookup(|_| None, dir.path()).unwrap();
        assert_eq!(second.open(b"r", &sealed).unwrap().expose(), b"x");

        std::fs::write(&path, "garbage").unwrap();
        let e = CredentialCipher::from_lookup(|_| None, dir.path()).unwrap_err();
        assert!(e.to_string().contains("local-1.key"), "{e}");
    }

    /// A key file (or keys directory) an older version left readable by others is made
    /// owner-only at the next start, not merely warned about.
    #[cfg(unix)]
    #[test]
    fn loose_key_files_are_tightened_at_start() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        CredentialCipher::from_lookup(|_| None, dir.path()).unwrap();
        let keys = dir.path().join("keys");
        let old = keys.join("old-1.key");
        std::fs::write(&old, BASE64.encode([7u8; KEY_LEN])).unwrap();
        let loosen = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        loosen(&keys, 0o755);
        loosen(&keys.join("local-1.key"), 0o644);
        loosen(&old, 0o644);
        CredentialCipher::from_lookup(|_| None, dir.path()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&keys), 0o700);
        assert_eq!(mode(&keys.join("local-1.key")), 0o600);
        assert_eq!(mode(&old), 0o600, "keys kept for decryption too");
    }
}
