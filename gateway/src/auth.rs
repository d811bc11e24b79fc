//! Users and tokens.
//!
//! Users come from a JSON file (`--users FILE`: `[{"username": "...", "password_hash":
//! "<argon2 PHC string>", "account": N}]`) or, by default, a built-in demo set whose
//! passwords are hashed with argon2 at start-up. Login returns a short-lived HS256 JWT
//! naming the user and the account; REST takes it as `Authorization: Bearer`, WebSocket as
//! `?token=` on the upgrade. Expired, forged, malformed and missing tokens are all answered
//! with the same 401: nothing about why is revealed beyond the code.
//!
//! A token is also checked against the server's users (a user removed from `--users` has
//! no working token) and its session (see [`crate::sessions`]): logout revokes it, and a
//! session cannot be refreshed past `--session-max-secs` from its login.

use std::collections::HashMap;
use std::time::Duration;

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tickgate_engine::AccountId;

/// The built-in users, documented in the README: (username, password, account).
pub const DEMO_USERS: [(&str, &str, u32); 2] =
    [("alice", "alice-demo-password", 1), ("bob", "bob-demo-password", 2)];

/// A user who can log in.
#[derive(Clone, Debug)]
pub struct User {
    /// Login name.
    pub username: String,
    /// Argon2 hash (PHC string).
    pub password_hash: String,
    /// The engine account the user trades with.
    pub account: AccountId,
}

#[derive(Deserialize)]
struct UserFileEntry {
    username: String,
    password_hash: String,
    account: u32,
}

/// Why users could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The file could not be read.
    #[error("cannot read users file: {0}")]
    Io(#[from] std::io::Error),
    /// The file is not the expected JSON.
    #[error(
        "users file is not valid: {0} (it is a JSON array of \
         {{\"username\", \"password_hash\" (argon2), \"account\"}} objects)"
    )]
    Format(#[from] serde_json::Error),
    /// A hash is not an argon2 PHC string, or a name repeats.
    #[error("users file: {0}")]
    Invalid(String),
    /// Hashing failed.
    #[error("hashing a demo password failed: {0}")]
    Hash(String),
}

/// Every user, by name.
#[derive(Clone, Debug)]
pub struct Users {
    by_name: HashMap<String, User>,
}

impl Users {
    /// The demo users, hashed now.
    pub fn demo() -> Result<Users, UsersError> {
        let mut by_name = HashMap::new();
        for (name, password, account) in DEMO_USERS {
            let salt = SaltString::generate(&mut OsRng);
            let hash = Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map_err(|e| UsersError::Hash(e.to_string()))?
                .to_string();
            by_name.insert(
                name.to_string(),
                User {
                    username: name.to_string(),
                    password_hash: hash,
                    account: AccountId(account),
                },
            );
        }
        Ok(Users { by_name })
    }

    /// Users from a JSON file.
    pub fn from_file(path: &std::path::Path) -> Result<Users, UsersError> {
        let entries: Vec<UserFileEntry> = serde_json::from_slice(&std::fs::read(path)?)?;
        if entries.is_empty() {
            return Err(UsersError::Invalid("no users in it: nobody could log in".into()));
        }
        let mut by_name = HashMap::new();
        for e in entries {
            PasswordHash::new(&e.password_hash)
                .map_err(|err| UsersError::Invalid(format!("{}: {err}", e.username)))?;
            let user = User {
                username: e.username.clone(),
                password_hash: e.password_hash,
                account: AccountId(e.account),
            };
            if by_name.insert(e.username.clone(), user).is_some() {
                return Err(UsersError::Invalid(format!("duplicate user {}", e.username)));
            }
        }
        Ok(Users { by_name })
    }

    /// Every user.
    pub fn all(&self) -> impl Iterator<Item = &User> {
        self.by_name.values()
    }

    /// The user if the password is right. Unknown users cost a hash too, so timing does
    /// not tell which names exist.
    pub fn check(&self, username: &str, password: &str) -> Option<&User> {
        let user = self.by_name.get(username);
        let hash = user.map(|u| u.password_hash.as_str()).unwrap_or(DUMMY_HASH);
        let ok = PasswordHash::new(hash)
            .is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok());
        user.filter(|_| ok)
    }
}

/// A valid argon2 hash of a random string: verified against when the user is unknown.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$ZmTBw3fcuUm0ZK3IgXv0eAvGZ7mO5cE0GZbYbYyP0uA";

/// What a token says.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Username.
    pub sub: String,
    /// Account id.
    pub acc: u32,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Session id: one per login, kept by refreshes.
    pub sid: u64,
    /// The user's generation when the session started.
    pub gen: u64,
    /// When the session started (the login), seconds since the epoch.
    pub auth: u64,
}

/// A token the server refused (expired, forged, malformed, missing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid or expired token")]
pub struct InvalidToken;

/// Issues and checks tokens.
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    lifetime: Duration,
    /// Longest a session lives from its login, refreshes included.
    session_max: Duration,
    /// Who may hold a token: username -> account.
    users: HashMap<String, AccountId>,
    sessions: crate::sessions::Sessions,
    /// Tokens whose signature checked, with their claims: a client sends the same token
    /// with every request for its whole life, and the signature check (base64, HMAC,
    /// JSON) is the dearest part of authenticating. Looked up by the exact token text;
    /// expiry is still checked on every use.
    verified: dashmap::DashMap<Box<str>, Claims>,
    /// Issue times, expiry, session ages.
    clock: tickgate_engine::SharedClock,
}

/// Verified tokens kept at most (expired ones go first, then all of them).
const VERIFIED_MAX: usize = 65_536;

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("lifetime", &self.lifetime).finish_non_exhaustive()
    }
}

impl Tokens {
    /// Tokens signed with `secret` (random when `None`: tokens then die with the process)
    /// for `users`, their sessions kept in `sessions`.
    pub fn new(
        secret: Option<&[u8]>,
        lifetime: Duration,
        session_max: Duration,
        users: &Users,
        sessions: crate::sessions::Sessions,
    ) -> Tokens {
        let clock = tickgate_engine::WallClock::shared();
        Tokens::with_clock(clock, secret, lifetime, session_max, users, sessions)
    }

    /// [`Tokens::new`] with time from `clock`: issue times, expiry and session ages.
    pub fn with_clock(
        clock: tickgate_engine::SharedClock,
        secret: Option<&[u8]>,
        lifetime: Duration,
        session_max: Duration,
        users: &Users,
        sessions: crate::sessions::Sessions,
    ) -> Tokens {
        let mut random = [0u8; 32];
        let secret = match secret {
            Some(s) => s,
            None => {
                OsRng.fill_bytes(&mut random);
                &random
            }
        };
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is checked here, exactly and with the injected clock, not by the library
        // (whole seconds of the wall clock); it must still be present.
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Tokens {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            lifetime,
            session_max,
            users: users.all().map(|u| (u.username.clone(), u.account)).collect(),
            sessions,
            verified: dashmap::DashMap::new(),
            clock,
        }
    }

    /// Changes on every revocation: holders of a session (WebSocket connections, SSE
    /// streams) then check theirs with [`Tokens::stands`].
    pub fn revocations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.sessions.watch()
    }

    /// Whether the session of `claims` still stands (user, generation, not revoked; the
    /// token's own expiry is not looked at: a connection outlives its token).
    pub fn stands(&self, claims: &Claims) -> bool {
        self.users.get(&claims.sub) == Some(&AccountId(claims.acc))
            && self.sessions.stands(&claims.sub, claims.gen, claims.sid)
    }

    /// The sessions behind the tokens.
    pub fn sessions(&self) -> &crate::sessions::Sessions {
        &self.sessions
    }

    /// Ends the session of `claims`.
    pub fn revoke(&self, claims: &Claims) {
        let until = claims.auth + self.session_max.as_secs();
        self.sessions.revoke(claims.sid, until, self.clock.now_secs());
    }

    /// Ends every session of the user of `claims`.
    pub fn revoke_all(&self, claims: &Claims) {
        self.sessions.revoke_all(&claims.sub, self.clock.now().0 / 1_000_000);
    }

    /// A new token for the session of `claims` (a refresh): `None` once the session is
    /// past its maximum age.
    pub fn renew(&self, claims: &Claims) -> Option<String> {
        let end = claims.auth + self.session_max.as_secs();
        (self.clock.now_secs() < end)
            .then(|| self.sign(&claims.sub, claims.acc, claims.sid, claims.gen, claims.auth))
    }

    /// Token lifetime.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// A token for a new session of `user` (a login).
    pub fn issue(&self, username: &str, account: AccountId) -> String {
        let sid = OsRng.next_u64();
        let gen = self.sessions.generation(username);
        self.sign(username, account.0, sid, gen, self.clock.now_secs())
    }

    fn sign(&self, username: &str, account: u32, sid: u64, gen: u64, auth: u64) -> String {
        let iat = self.clock.now_secs();
        // Never past the session's end.
        let exp = (iat + self.lifetime.as_secs()).min(auth + self.session_max.as_secs());
        let claims = Claims { sub: username.to_string(), acc: account, iat, exp, sid, gen, auth };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 encoding of plain claims cannot fail")
    }

    /// How long `token` (one this server signed) lives from its issue, in seconds: the
    /// lifetime, or less where the session's maximum age cuts it short. Its expiry is not
    /// checked (a token signed in the session's last second still says 0, not an error).
    pub fn lifetime_of(&self, token: &str) -> Option<u64> {
        let claims =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok()?;
        Some(claims.claims.exp.saturating_sub(claims.claims.iat))
    }

    /// The claims of a valid, unexpired token.
    pub fn verify(&self, token: &str) -> Result<Claims, InvalidToken> {
        let now = self.clock.now_secs();
        if let Some(claims) = self.verified.get(token) {
            return if claims.exp > now && self.stands(&claims) {
                Ok(claims.clone())
            } else {
                Err(InvalidToken)
            };
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|_| InvalidToken)?;
        if claims.exp <= now || !self.stands(&claims) || has_critical_extensions(token) {
            return Err(InvalidToken);
        }
        if self.verified.len() >= VERIFIED_MAX {
            self.verified.retain(|_, c| c.exp > now);
            if self.verified.len() >= VERIFIED_MAX {
                self.verified.clear();
            }
        }
        self.verified.insert(token.into(), claims.clone());
        Ok(claims)
    }
}

/// What nodes of a deployment compare to learn they share the token secret (a token one
/// signs is good on the others only then): an HMAC-SHA256 of a fixed text under it, which
/// does not tell the secret.
pub fn secret_check(secret: &[u8]) -> String {
    let key = EncodingKey::from_secret(secret);
    jsonwebtoken::crypto::sign(b"tickgate: the nodes' token secret", &key, Algorithm::HS256)
        .unwrap_or_default()
}

/// Whether a token's header names critical extensions (`crit`, RFC 7515 4.1.11), or cannot
/// be read: this server understands none, so such a token is refused even with a good
/// signature. (Its own tokens have none; only a holder of the secret could make one.)
fn has_critical_extensions(token: &str) -> bool {
    use base64::Engine as _;
    let header = token.split('.').next().unwrap_or_default();
    let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header) else {
        return true;
    };
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&json)
        .map_or(true, |fields| fields.contains_key("crit"))
}

/// A session held open (a WebSocket connection, an SSE stream): resolves
/// [`SessionWatch::revoked`] once a logout or the user's removal ended it.
#[derive(Debug)]
pub struct SessionWatch {
    tokens: std::sync::Arc<Tokens>,
    claims: Claims,
    changes: tokio::sync::watch::Receiver<u64>,
}

impl SessionWatch {
    /// Watches the session of `claims`. The first [`SessionWatch::revoked`] checks the
    /// session at once: a revocation between the token's check and this call is not missed.
    pub fn new(tokens: std::sync::Arc<Tokens>, claims: Claims) -> SessionWatch {
        let mut changes = tokens.revocations();
        changes.mark_changed();
        SessionWatch { tokens, claims, changes }
    }

    /// Resolves when the session no longer stands (never, while it does).
    pub async fn revoked(&mut self) {
        loop {
            if self.changes.changed().await.is_err() {
                return std::future::pending().await;
            }
            if !self.tokens.stands(&self.claims) {
                return;
            }
        }
    }
}

/// [`SessionWatch::revoked`] of a session that may not be there (never resolves then).
pub async fn revoked(session: &mut Option<SessionWatch>) {
    match session {
        Some(s) => s.revoked().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Alice on account 1 and Bob on account 2, without hashing anything.
    fn users() -> Users {
        let user = |name: &str, account| User {
            username: name.to_string(),
            password_hash: DUMMY_HASH.to_string(),
            account: AccountId(account),
        };
        let by_name = [("alice", 1), ("bob", 2)]
            .into_iter()
            .map(|(n, a)| (n.to_string(), user(n, a)))
            .collect();
        Users { by_name }
    }

    fn test_tokens(secret: &[u8], lifetime: Duration) -> Tokens {
        let sessions = crate::sessions::Sessions::in_memory();
        Tokens::new(Some(secret), lifetime, Duration::from_secs(3600), &users(), sessions)
    }

    /// A users file that is not one, or holds nobody, refuses the start saying what it
    /// should be.
    #[test]
    fn a_users_file_says_what_is_wrong_with_it() {
        let path = std::env::temp_dir().join(format!("tickgate-users-{}.json", std::process::id()));
        let refused = |text: &str| {
            std::fs::write(&path, text).expect("write");
            Users::from_file(&path).err().map(|e| e.to_string()).unwrap_or_default()
        };
        assert!(refused("username: alice").contains("a JSON array of"), "not JSON");
        assert!(refused("[]").contains("nobody could log in"));
        let hash = Users::demo().expect("demo").by_name["alice"].password_hash.clone();
        std::fs::write(
            &path,
            serde_json::json!([{"username": "a", "password_hash": hash, "account": 1}]).to_string(),
        )
        .expect("write");
        assert!(Users::from_file(&path).is_ok_and(|u| u.all().count() == 1));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn removed_users_logouts_and_old_sessions_are_refused() {
        let t = test_tokens(b"s", Duration::from_secs(60));
        let alice = t.issue("alice", AccountId(1));
        let claims = t.verify(&alice).expect("valid");
        // Same secret, but alice is no longer a user (or on another account).
        let mut fewer = users();
        fewer.by_name.remove("alice");
        let other_server = Tokens::new(
            Some(b"s"),
            Duration::from_secs(60),
            Duration::from_secs(3600),
            &fewer,
            crate::sessions::Sessions::in_memory(),
        );
        assert_eq!(other_server.verify(&alice), Err(InvalidToken), "removed user");
        assert_eq!(t.verify(&t.issue("alice", AccountId(2))), Err(InvalidToken), "wrong account");
        // A refresh keeps the session; a logout ends it, refreshed tokens included.
        let refreshed = t.renew(&claims).expect("within the session's age");
        assert_eq!(t.verify(&refreshed).map(|c| c.sid), Ok(claims.sid));
        let second = t.issue("alice", AccountId(1));
        t.revoke(&claims);
        assert_eq!(t.verify(&alice), Err(InvalidToken), "cached, then revoked");
        assert_eq!(t.verify(&refreshed), Err(InvalidToken));
        assert!(t.verify(&second).is_ok(), "another session of alice stands");
        let bob = t.issue("bob", AccountId(2));
        t.revoke_all(&t.verify(&second).expect("valid"));
        assert_eq!(t.verify(&second), Err(InvalidToken), "every session of alice ended");
        assert!(t.verify(&bob).is_ok(), "bob's untouched");
        // A session past its maximum age cannot be refreshed.
        let short = Tokens::new(
            Some(b"s"),
            Duration::from_secs(60),
            Duration::ZERO,
            &users(),
            crate::sessions::Sessions::in_memory(),
        );
        let token = t.issue("bob", AccountId(2));
        assert_eq!(short.renew(&t.verify(&token).expect("valid")), None);
    }

    #[test]
    fn tokens_round_trip_and_refuse_forgeries() {
        let tokens = test_tokens(b"secret-one", Duration::from_secs(60));
        let t = tokens.issue("alice", AccountId(1));
        let claims = tokens.verify(&t).expect("valid");
        assert_eq!((claims.sub.as_str(), claims.acc), ("alice", 1));
        let other = test_tokens(b"secret-two", Duration::from_secs(60));
        assert_eq!(other.verify(&t), Err(InvalidToken), "forged: other key");
        assert_eq!(tokens.verify("not.a.token"), Err(InvalidToken));
        assert_eq!(tokens.verify(""), Err(InvalidToken));
        let mut tampered = t.clone();
        tampered.pop();
        assert_eq!(tokens.verify(&tampered), Err(InvalidToken));
        let expired = test_tokens(b"secret-one", Duration::from_secs(0));
        assert_eq!(tokens.verify(&expired.issue("alice", AccountId(1))), Err(InvalidToken));
        // Checked again, from the cache of verified tokens: the same answers.
        assert_eq!(tokens.verify(&t).map(|c| c.acc), Ok(1));
        assert_eq!(other.verify(&t), Err(InvalidToken));
        assert_eq!(tokens.verify(&tampered), Err(InvalidToken));
    }

    #[test]
    fn a_token_with_critical_extensions_is_refused() {
        use base64::Engine as _;
        let secret = b"secret-one";
        let tokens = test_tokens(secret, Duration::from_secs(60));
        let good = tokens.issue("alice", AccountId(1));
        let claims = good.split('.').nth(1).expect("three parts");
        // Signed with the right secret: only the header differs.
        let signed = |header: &str| {
            let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(header);
            let message = format!("{header}.{claims}");
            let key = EncodingKey::from_secret(secret);
            let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256)
                .expect("HS256 signs");
            format!("{message}.{signature}")
        };
        let plain = signed(r#"{"alg":"HS256","typ":"JWT"}"#);
        assert!(tokens.verify(&plain).is_ok(), "the same token, signed here: good");
        let critical = signed(r#"{"alg":"HS256","typ":"JWT","crit":["exp2"],"exp2":1}"#);
        assert_eq!(tokens.verify(&critical), Err(InvalidToken));
    }

    #[test]
    fn a_cached_token_still_expires() {
        let clock = tickgate_engine::ManualClock::at_wall_time();
        let sessions = crate::sessions::Sessions::in_memory();
        let (lifetime, hour) = (Duration::from_secs(1), Duration::from_secs(3600));
        let tokens =
            Tokens::with_clock(clock.clone(), Some(b"secret"), lifetime, hour, &users(), sessions);
        let t = tokens.issue("alice", AccountId(1));
        tokens.verify(&t).expect("fresh");
        assert_eq!(tokens.verified.len(), 1, "verified once, then cached");
        clock.advance(Duration::from_secs(1));
        assert_eq!(tokens.verify(&t), Err(InvalidToken), "expired while cached");
    }

    #[test]
    fn passwords_are_checked_against_argon2_hashes() {
        let users = Users::demo().expect("hashing works");
        let alice = users.check("alice", "alice-demo-password").expect("right password");
        assert_eq!(alice.account, AccountId(1));
        assert!(alice.password_hash.starts_with("$argon2"));
        assert!(users.check("alice", "wrong").is_none());
        assert!(users.check("mallory", "alice-demo-password").is_none());
        assert!(PasswordHash::new(DUMMY_HASH).is_ok(), "the dummy hash parses");
    }
}
