//! Users files for `tickgate --users`: a JSON array of `{username, password_hash,
//! account}` with argon2id hashes.

use std::path::Path;

use anyhow::Context;
use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Writes `count` users `user<i>` / `pw<i>` on accounts `first_account + i`. `cheap` uses
/// the smallest argon2 cost (for load tests that log many users in), otherwise the
/// library's recommended defaults.
pub fn write(path: &Path, count: u32, first_account: u32, cheap: bool) -> anyhow::Result<()> {
    let argon = if cheap {
        let params = Params::new(8, 1, 1, None).map_err(|e| anyhow::anyhow!("{e}"))?;
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
    } else {
        Argon2::default()
    };
    if count > 0 && first_account.checked_add(count - 1).is_none() {
        anyhow::bail!("accounts {first_account} + {count} users pass the largest account id");
    }
    let mut users = Vec::with_capacity(count as usize);
    for i in 0..count {
        let salt = SaltString::generate(&mut OsRng);
        let hash = argon
            .hash_password(format!("pw{i}").as_bytes(), &salt)
            .map_err(|e| anyhow::anyhow!("hashing: {e}"))?
            .to_string();
        users.push(serde_json::json!({
            "username": format!("user{i}"),
            "password_hash": hash,
            "account": first_account + i,
        }));
    }
    std::fs::write(path, serde_json::to_vec_pretty(&users)?)
        .with_context(|| format!("writing {}", path.display()))
}
