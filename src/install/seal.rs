//! The sealed token: the connect configuration (which holds the access token) encrypted to the ephemeral
//! RSA keys the instances of a batch made in the key exchange, so that no command parameter carries it.
//!
//! Format, chosen so that the `openssl` command line (1.0.2 to 3.x) and .NET Framework 4.5 can both open it
//! without anything else installed:
//! - a random 64-character passphrase `P` (32 random bytes, hex) and an 8-byte salt `S`;
//! - `C` = `openssl enc -aes-256-cbc -md sha256` of the configuration: `Salted__ || S || AES-256-CBC(K, IV,
//!   PKCS#7)`, where `K = SHA-256(P || S)` and `IV` = the first 16 bytes of `SHA-256(K || P || S)`
//!   (`EVP_BytesToKey` with one round: `P` is random, so no stretching is needed); one `C` per batch;
//! - per instance, `RSA-OAEP(SHA-1, MGF1-SHA-1)` of `P || hex(SHA-256(C))` to that instance's key (OAEP
//!   with SHA-1 is the only OAEP .NET 4.5's `RSACryptoServiceProvider` has; it is still sound for
//!   encryption). The digest binds `C` to the wrapped passphrase: a changed `C` is refused before it is
//!   decrypted.
//!
//! Only the instance that holds the private key (root-only, deleted when the install ends) can recover
//! `P`, so only it can read the token.

use std::collections::BTreeMap;

use aws_lc_rs::cipher::{PaddedBlockEncryptingKey, UnboundCipherKey, AES_256};
use aws_lc_rs::rsa::{
    OaepPublicEncryptingKey, PublicEncryptingKey, PublicKeyComponents, OAEP_SHA1_MGF1SHA1,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The marker of the line the key exchange prints for an instance that is ready for a token.
pub const KEY_MARKER: &str = "ARC_ONBOARD_KEY";

/// Smallest RSA key accepted from an instance, in bits.
const MIN_KEY_BITS: usize = 2048;

/// Why a token could not be sealed or a key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key line is missing or malformed.
    #[error("the key exchange printed no usable key line")]
    NoKey,
    /// The public key is not an RSA key of at least 2048 bits.
    #[error("the instance's public key is not an RSA key of at least 2048 bits")]
    BadKey,
    /// The key line names another instance or exchange.
    #[error("the key line names instance {instance_id} and exchange {key_id}, not this one")]
    Mismatch {
        /// What the line said.
        instance_id: String,
        /// What the line said.
        key_id: String,
    },
    /// The platform's crypto failed (no randomness, encryption error).
    #[error("encryption failed")]
    Crypto,
}

/// An instance's ephemeral public key, from its key-exchange output.
#[derive(Clone)]
pub struct InstanceKey {
    /// The instance the key belongs to (read there from IMDSv2).
    pub instance_id: String,
    key: PublicEncryptingKey,
}

impl std::fmt::Debug for InstanceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceKey")
            .field("instance_id", &self.instance_id)
            .field("bits", &self.key.key_size_bits())
            .finish()
    }
}

/// The key line: Linux prints the SubjectPublicKeyInfo (DER, base64); Windows the modulus and exponent
/// (big-endian, hex), which is what .NET 4.5 exports without help.
#[derive(Deserialize)]
struct KeyLine {
    instance_id: String,
    key_id: String,
    #[serde(default)]
    public_key: String,
    #[serde(default)]
    modulus: String,
    #[serde(default)]
    exponent: String,
}

/// Reads the key line of `instance_id` for exchange `key_id` from a key exchange's output (the last
/// complete one wins).
pub fn parse_key(stdout: &str, instance_id: &str, key_id: &str) -> Result<InstanceKey, SealError> {
    let line = stdout
        .lines()
        .rev()
        .find_map(|l| {
            let at = l.rfind(KEY_MARKER)?;
            serde_json::from_str::<KeyLine>(l[at + KEY_MARKER.len()..].trim()).ok()
        })
        .ok_or(SealError::NoKey)?;
    if line.instance_id != instance_id || line.key_id != key_id {
        return Err(SealError::Mismatch {
            instance_id: line.instance_id,
            key_id: line.key_id,
        });
    }
    let key: PublicEncryptingKey = if line.public_key.is_empty() {
        let n = hex::decode(&line.modulus).map_err(|_| SealError::BadKey)?;
        let e = hex::decode(&line.exponent).map_err(|_| SealError::BadKey)?;
        PublicKeyComponents {
            n: n.as_slice(),
            e: e.as_slice(),
        }
        .try_into()
        .map_err(|_| SealError::BadKey)?
    } else {
        use base64::Engine;
        let der = base64::engine::general_purpose::STANDARD
            .decode(line.public_key.trim())
            .map_err(|_| SealError::BadKey)?;
        PublicEncryptingKey::from_der(&der).map_err(|_| SealError::BadKey)?
    };
    if key.key_size_bits() < MIN_KEY_BITS {
        return Err(SealError::BadKey);
    }
    Ok(InstanceKey {
        instance_id: line.instance_id,
        key,
    })
}

/// The connect configuration sealed to the keys of one batch.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedToken {
    /// The key exchange whose keys opened it (names the private key file on the instances).
    pub key_id: String,
    /// `C`: the configuration, encrypted once.
    pub ciphertext: Vec<u8>,
    /// Per instance id: the passphrase and `C`'s digest, wrapped to that instance's key.
    pub wrapped: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for SealedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedToken")
            .field("key_id", &self.key_id)
            .field("ciphertext_len", &self.ciphertext.len())
            .field("instances", &self.wrapped.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The `azcmagent connect --config` file for an access token: `{"access-token": "..."}`.
pub fn connect_config(access_token: &str) -> String {
    serde_json::json!({ "access-token": access_token }).to_string()
}

/// Seals `plaintext` (the connect configuration) for the instances of `keys`.
pub fn seal(
    plaintext: &[u8],
    key_id: &str,
    keys: &[InstanceKey],
) -> Result<SealedToken, SealError> {
    let mut secret = [0u8; 32];
    let mut salt = [0u8; 8];
    aws_lc_rs::rand::fill(&mut secret).map_err(|_| SealError::Crypto)?;
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| SealError::Crypto)?;
    let passphrase = hex::encode(secret);
    let (key, iv) = bytes_to_key(passphrase.as_bytes(), &salt);
    let cipher = PaddedBlockEncryptingKey::cbc_pkcs7(
        UnboundCipherKey::new(&AES_256, &key).map_err(|_| SealError::Crypto)?,
    )
    .map_err(|_| SealError::Crypto)?;
    let mut body = plaintext.to_vec();
    cipher
        .less_safe_encrypt(
            &mut body,
            aws_lc_rs::cipher::EncryptionContext::Iv128(iv.into()),
        )
        .map_err(|_| SealError::Crypto)?;
    let mut ciphertext = b"Salted__".to_vec();
    ciphertext.extend_from_slice(&salt);
    ciphertext.extend_from_slice(&body);
    let payload = format!("{passphrase}{}", hex::encode(Sha256::digest(&ciphertext)));
    let mut wrapped = BTreeMap::new();
    for k in keys {
        let oaep = OaepPublicEncryptingKey::new(k.key.clone()).map_err(|_| SealError::Crypto)?;
        let mut out = vec![0u8; oaep.ciphertext_size()];
        let n = oaep
            .encrypt(&OAEP_SHA1_MGF1SHA1, payload.as_bytes(), &mut out, None)
            .map_err(|_| SealError::Crypto)?
            .len();
        out.truncate(n);
        wrapped.insert(k.instance_id.clone(), out);
    }
    Ok(SealedToken {
        key_id: key_id.to_owned(),
        ciphertext,
        wrapped,
    })
}

/// OpenSSL's `EVP_BytesToKey(AES-256-CBC, SHA-256, salt, passphrase, 1 round)`: the key and IV
/// `openssl enc -md sha256 -pass ...` derives.
fn bytes_to_key(passphrase: &[u8], salt: &[u8]) -> ([u8; 32], [u8; 16]) {
    let d1 = Sha256::new()
        .chain_update(passphrase)
        .chain_update(salt)
        .finalize();
    let d2 = Sha256::new()
        .chain_update(d1)
        .chain_update(passphrase)
        .chain_update(salt)
        .finalize();
    let mut key = [0u8; 32];
    key.copy_from_slice(&d1);
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&d2[..16]);
    (key, iv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa::{KeyPair, KeySize, OaepPrivateDecryptingKey, PrivateDecryptingKey};
    use aws_lc_rs::signature::KeyPair as _;

    /// An instance's key pair: the pair (for its public half) and the same key for decryption.
    fn keypair() -> (KeyPair, PrivateDecryptingKey) {
        let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
        let pkcs8 = pair.as_der().unwrap();
        let private = PrivateDecryptingKey::from_pkcs8(pkcs8.as_ref()).unwrap();
        (pair, private)
    }

    fn spki_line(instance: &str, key_id: &str, pair: &KeyPair) -> String {
        use base64::Engine;
        let der = pair.public_key().as_der().unwrap();
        format!(
            "noise\n{KEY_MARKER} {{\"instance_id\":\"{instance}\",\"key_id\":\"{key_id}\",\"public_key\":\"{}\"}}\n",
            base64::engine::general_purpose::STANDARD.encode(der.as_ref())
        )
    }

    /// Opens a sealed token as the scripts do.
    fn open(sealed: &SealedToken, instance: &str, private: &PrivateDecryptingKey) -> Vec<u8> {
        let oaep = OaepPrivateDecryptingKey::new(private.clone()).unwrap();
        let mut out = vec![0u8; oaep.min_output_size()];
        let payload = oaep
            .decrypt(
                &OAEP_SHA1_MGF1SHA1,
                &sealed.wrapped[instance],
                &mut out,
                None,
            )
            .unwrap()
            .to_vec();
        let (passphrase, digest) = payload.split_at(64);
        assert_eq!(
            digest,
            hex::encode(Sha256::digest(&sealed.ciphertext)).as_bytes()
        );
        assert_eq!(&sealed.ciphertext[..8], b"Salted__");
        let (key, iv) = bytes_to_key(passphrase, &sealed.ciphertext[8..16]);
        let cipher = aws_lc_rs::cipher::PaddedBlockDecryptingKey::cbc_pkcs7(
            UnboundCipherKey::new(&AES_256, &key).unwrap(),
        )
        .unwrap();
        let mut body = sealed.ciphertext[16..].to_vec();
        cipher
            .decrypt(
                &mut body,
                aws_lc_rs::cipher::DecryptionContext::Iv128(iv.into()),
            )
            .unwrap()
            .to_vec()
    }

    #[test]
    fn each_instance_opens_the_token_with_its_own_key_only() {
        let ((a_pair, a), (b_pair, b)) = (keypair(), keypair());
        let keys = [
            parse_key(&spki_line("i-a", "k1", &a_pair), "i-a", "k1").unwrap(),
            parse_key(&spki_line("i-b", "k1", &b_pair), "i-b", "k1").unwrap(),
        ];
        let config = connect_config("tok\"en\\with json");
        let sealed = seal(config.as_bytes(), "k1", &keys).unwrap();
        assert_eq!(open(&sealed, "i-a", &a), config.as_bytes());
        assert_eq!(open(&sealed, "i-b", &b), config.as_bytes());
        assert!(!sealed.ciphertext.windows(3).any(|w| w == b"tok"));
        let shown = format!("{sealed:?}");
        assert!(!shown.contains("tok"), "{shown}");
        // The other instance's blob does not open with this key.
        let oaep = OaepPrivateDecryptingKey::new(a.clone()).unwrap();
        let mut out = vec![0u8; oaep.min_output_size()];
        assert!(oaep
            .decrypt(&OAEP_SHA1_MGF1SHA1, &sealed.wrapped["i-b"], &mut out, None)
            .is_err());
    }

    #[test]
    fn windows_keys_arrive_as_modulus_and_exponent() {
        let (pair, private) = keypair();
        let comps: PublicKeyComponents<Vec<u8>> = pair.public_key().into();
        let line = format!(
            "{KEY_MARKER} {{\"instance_id\":\"i-w\",\"key_id\":\"k\",\"modulus\":\"{}\",\"exponent\":\"{}\"}}",
            hex::encode_upper(&comps.n),
            hex::encode_upper(&comps.e)
        );
        let key = parse_key(&line, "i-w", "k").unwrap();
        let sealed = seal(b"{}", "k", &[key]).unwrap();
        assert_eq!(open(&sealed, "i-w", &private), b"{}");
    }

    #[test]
    fn bad_or_foreign_key_lines_are_refused() {
        let (a, _) = keypair();
        assert!(matches!(
            parse_key("nothing here", "i-a", "k"),
            Err(SealError::NoKey)
        ));
        assert!(matches!(
            parse_key(&spki_line("i-b", "k", &a), "i-a", "k"),
            Err(SealError::Mismatch { .. })
        ));
        assert!(matches!(
            parse_key(&spki_line("i-a", "old", &a), "i-a", "k"),
            Err(SealError::Mismatch { .. })
        ));
        let small = format!(
            "{KEY_MARKER} {{\"instance_id\":\"i-a\",\"key_id\":\"k\",\"modulus\":\"{}\",\"exponent\":\"010001\"}}",
            "c3".repeat(128)
        );
        assert!(matches!(
            parse_key(&small, "i-a", "k"),
            Err(SealError::BadKey)
        ));
    }
}
