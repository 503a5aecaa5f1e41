//! Microsoft Entra tokens for sinks that authenticate with an identity (Redis, AI Search, Event
//! Hubs over AMQP and Kafka), from `azure_identity`: a managed identity in Azure (user-assigned when
//! `AZURE_CLIENT_ID` is set), developer tools (`az login`, `azd auth login`) elsewhere.
//! Tokens are cached and refreshed before they expire; they are never logged.

use azure_core::credentials::{AccessToken, TokenCredential};
use azure_identity::{
    DeveloperToolsCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// Why no credential or no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum EntraError {
    #[error("{kind}: {source}")]
    Credential {
        kind: &'static str,
        #[source]
        source: azure_core::Error,
    },
    #[error("cannot get an Entra token for {scope}: {source}")]
    Token {
        scope: String,
        #[source]
        source: azure_core::Error,
    },
}

/// Refresh a token this long before it expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

pub struct EntraToken {
    credential: Arc<dyn TokenCredential>,
    scope: String,
    cached: Mutex<Option<AccessToken>>,
}

impl std::fmt::Debug for EntraToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EntraToken({})", self.scope)
    }
}

/// Picks the credential from the environment: a managed identity where the platform provides
/// one (`IDENTITY_ENDPOINT` / `MSI_ENDPOINT`, or `AZURE_CLIENT_ID` set), else the developer's
/// own login. Clients that take a credential themselves (the Event Hubs producer) use it as is.
pub fn credential_from_env() -> Result<Arc<dyn TokenCredential>, EntraError> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if env("IDENTITY_ENDPOINT").is_some()
        || env("MSI_ENDPOINT").is_some()
        || env("AZURE_CLIENT_ID").is_some()
    {
        let options = ManagedIdentityCredentialOptions {
            user_assigned_id: env("AZURE_CLIENT_ID").map(UserAssignedId::ClientId),
            ..Default::default()
        };
        Ok(
            ManagedIdentityCredential::new(Some(options)).map_err(|source| {
                EntraError::Credential {
                    kind: "managed identity",
                    source,
                }
            })?,
        )
    } else {
        Ok(
            DeveloperToolsCredential::new(None).map_err(|source| EntraError::Credential {
                kind: "developer credential (az login)",
                source,
            })?,
        )
    }
}

/// A token's secret and when it stops working.
pub struct Token {
    pub secret: String,
    pub expires_in: Duration,
}

impl EntraToken {
    /// A token source for `scope` with the credential [`credential_from_env`] picks.
    pub fn from_env(scope: &str) -> Result<Self, EntraError> {
        Ok(Self {
            credential: credential_from_env()?,
            scope: scope.to_string(),
            cached: Mutex::new(None),
        })
    }

    /// A valid token, fetched anew when the cached one is close to expiry.
    pub async fn token(&self) -> Result<Token, EntraError> {
        let mut cached = self.cached.lock().await;
        let now = azure_core::time::OffsetDateTime::now_utc();
        let fresh = cached
            .as_ref()
            .filter(|t| t.expires_on - now > REFRESH_MARGIN);
        let token = match fresh {
            Some(t) => t.clone(),
            None => {
                let t = self
                    .credential
                    .get_token(&[self.scope.as_str()], None)
                    .await
                    .map_err(|source| EntraError::Token {
                        scope: self.scope.clone(),
                        source,
                    })?;
                *cached = Some(t.clone());
                t
            }
        };
        let left = token.expires_on - now;
        Ok(Token {
            secret: token.token.secret().to_string(),
            expires_in: Duration::from_secs(left.whole_seconds().max(0) as u64),
        })
    }
}
