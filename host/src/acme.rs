//! ACME (RFC 8555): certificates for `tls.acme.domains` obtained and renewed
//! without anyone's help, with `instant-acme`.
//!
//! The account and the certificate are kept in `tls.acme.cache`, so a
//! restart serves the cached certificate at once and asks the CA for
//! nothing until renewal is due (`renew_before` ahead of expiry). Proof of
//! control is HTTP-01: the CA fetches
//! `http://DOMAIN/.well-known/acme-challenge/TOKEN` from the plain listener,
//! which answers from [`Challenges`] before any route or redirect. A failed
//! attempt is logged and tried again with backoff (1 min doubling to 1 h);
//! the certificate being served, if any, stays.

use crate::config::AcmeConfig;
use crate::tls::TlsServer;
use crate::tls::certs::{self, Pair};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The least time between two renewals of the same certificate.
const MIN_RENEWAL_GAP: Duration = Duration::from_secs(3600);

/// Where the CA's HTTP-01 requests arrive.
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// HTTP-01 answers being offered: token → key authorization.
#[derive(Debug, Default)]
pub struct Challenges {
    open: Mutex<HashMap<String, String>>,
}

impl Challenges {
    /// The key authorization for `token`, while its challenge is open.
    pub fn answer(&self, token: &str) -> Option<String> {
        lock(&self.open).get(token).cloned()
    }

    fn offer(&self, token: &str, answer: &str) {
        lock(&self.open).insert(token.to_owned(), answer.to_owned());
    }

    fn withdraw(&self, tokens: &[String]) {
        let mut open = lock(&self.open);
        for token in tokens {
            open.remove(token);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Keeps a certificate for `config.domains` in `tls`, for as long as the
/// process runs.
pub fn spawn(config: AcmeConfig, tls: Arc<TlsServer>, challenges: Arc<Challenges>) {
    tokio::spawn(async move { manage(config, tls, challenges).await });
}

async fn manage(config: AcmeConfig, tls: Arc<TlsServer>, challenges: Arc<Challenges>) {
    let mut backoff = Duration::from_secs(60);
    let mut served: Option<Pair> = None;
    let mut obtained_at: Option<std::time::Instant> = None;
    if let Some(pair) = cached(&config) {
        tracing::info!(event = "acme_cached", domains = ?config.domains, expires = %httpdate::fmt_http_date(pair.not_after), "serving the cached ACME certificate");
        tls.replace_acme(vec![pair.clone()]);
        served = Some(pair);
    }
    loop {
        if let Some(pair) = &served {
            let renew_at = pair
                .not_after
                .checked_sub(config.renew_before)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            match renew_at.duration_since(SystemTime::now()) {
                Ok(wait) => {
                    // Checked at least twice a day, so a clock jump or a long
                    // suspend cannot carry it past expiry.
                    tokio::time::sleep(wait.min(Duration::from_secs(12 * 3600))).await;
                    continue;
                }
                Err(_) if obtained_at.is_some_and(|at| at.elapsed() < MIN_RENEWAL_GAP) => {
                    // A certificate that is due as soon as it is issued
                    // (renew_before longer than the CA's lifetime): renewed
                    // at most once per gap, not in a loop against the CA.
                    tracing::warn!(event = "acme_renew_before_too_long", domains = ?config.domains, renew_before = ?config.renew_before, "a new certificate is already due for renewal: tls.acme.renew_before is longer than the CA's certificate lifetime");
                    tokio::time::sleep(MIN_RENEWAL_GAP).await;
                }
                Err(_) => {
                    tracing::info!(event = "acme_renewing", domains = ?config.domains, "certificate due for renewal")
                }
            }
        }
        match obtain(&config, &challenges).await {
            Ok(pair) => {
                tracing::info!(event = "certificate_obtained", domains = ?config.domains, expires = %httpdate::fmt_http_date(pair.not_after), "ACME certificate obtained");
                tls.replace_acme(vec![pair.clone()]);
                served = Some(pair);
                obtained_at = Some(std::time::Instant::now());
                backoff = Duration::from_secs(60);
            }
            Err(error) => {
                tracing::error!(event = "acme_failed", domains = ?config.domains, %error, retry_in = ?backoff, "could not obtain a certificate; trying again later");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(3600));
            }
        }
    }
}

/// The cached certificate, when it covers every domain and is still valid.
fn cached(config: &AcmeConfig) -> Option<Pair> {
    let (cert, key) = certificate_files(config);
    let pair = certs::load_pair(&cert, &key).ok()?;
    config
        .domains
        .iter()
        .all(|d| pair.names.contains(d))
        .then_some(pair)
}

fn certificate_files(config: &AcmeConfig) -> (PathBuf, PathBuf) {
    let name = config.domains.first().map_or("certificate", String::as_str);
    (
        config.cache.join(format!("{name}.crt")),
        config.cache.join(format!("{name}.key")),
    )
}

/// The account's file: one per directory, so changing CA makes a new account.
fn account_file(config: &AcmeConfig) -> PathBuf {
    let name: String = config
        .directory
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    config.cache.join(format!("account-{name}.json"))
}

/// One order, start to finish: account, HTTP-01 for every domain,
/// finalize, download, write to the cache.
async fn obtain(config: &AcmeConfig, challenges: &Challenges) -> Result<Pair, String> {
    std::fs::create_dir_all(&config.cache)
        .map_err(|e| format!("cache {}: {e}", config.cache.display()))?;
    let account = account(config).await?;
    let identifiers: Vec<Identifier> = config
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let mut offered = Vec::new();
    let validated = async {
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization.map_err(|e| format!("authorization: {e}"))?;
            match authorization.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("authorization is {other:?}")),
            }
            let mut challenge = authorization
                .challenge(ChallengeType::Http01)
                .ok_or("the CA offers no http-01 challenge")?;
            challenges.offer(&challenge.token, challenge.key_authorization().as_str());
            offered.push(challenge.token.clone());
            challenge
                .set_ready()
                .await
                .map_err(|e| format!("challenge: {e}"))?;
        }
        let patience = RetryPolicy::new().timeout(Duration::from_secs(120));
        match order.poll_ready(&patience).await {
            Ok(OrderStatus::Ready) => Ok(()),
            Ok(status) => Err(format!("order is {status:?} (validation failed)")),
            Err(e) => Err(format!("order: {e}")),
        }
    }
    .await;
    challenges.withdraw(&offered);
    validated?;
    let key = order
        .finalize()
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    let patience = RetryPolicy::new().timeout(Duration::from_secs(120));
    let chain = order
        .poll_certificate(&patience)
        .await
        .map_err(|e| format!("certificate: {e}"))?;
    let pair = certs::pair_from_pem(&chain, &key)?;
    let (cert_file, key_file) = certificate_files(config);
    write_private(&key_file, &key)?;
    std::fs::write(&cert_file, &chain).map_err(|e| format!("{}: {e}", cert_file.display()))?;
    Ok(pair)
}

/// The account from the cache, or a new one (then cached).
async fn account(config: &AcmeConfig) -> Result<Account, String> {
    let builder = || match &config.directory_ca {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    };
    let file = account_file(config);
    if let Ok(text) = std::fs::read_to_string(&file)
        && let Ok(credentials) = serde_json::from_str::<AccountCredentials>(&text)
    {
        return builder()
            .map_err(|e| format!("ACME client: {e}"))?
            .from_credentials(credentials)
            .await
            .map_err(|e| format!("account from {}: {e}", file.display()));
    }
    let contact: Vec<&str> = config.contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder()
        .map_err(|e| format!("ACME client: {e}"))?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            config.directory.clone(),
            None,
        )
        .await
        .map_err(|e| format!("new account at {}: {e}", config.directory))?;
    let text = serde_json::to_string(&credentials).map_err(|e| e.to_string())?;
    write_private(&file, &text)?;
    Ok(account)
}

/// Writes a secret readable by the owner only.
fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    options
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_answered_until_withdrawn() {
        let challenges = Challenges::default();
        challenges.offer("t1", "t1.thumb");
        assert_eq!(challenges.answer("t1").as_deref(), Some("t1.thumb"));
        assert_eq!(challenges.answer("t2"), None);
        challenges.withdraw(&["t1".to_owned()]);
        assert_eq!(challenges.answer("t1"), None);
    }
}
