//! Which account, database and container a function's trigger reads, from the same settings
//! the trigger uses: `databaseName` / `containerName` / `connection` in its function.json
//! (`%NAME%` resolved from the app settings), and the connection's app settings:
//! `{connection}__accountEndpoint` (Microsoft Entra: a managed identity in Azure, the
//! developer's `az login` elsewhere), or `{connection}` holding a connection string
//! `AccountEndpoint=...;AccountKey=...;` (keys: for local use). Parsed once, pure, tested.

use crate::config::FunctionDefinition;

/// How fanout authenticates to the account. The key is never printed (`Debug` hides it).
#[derive(Clone, PartialEq, Eq)]
pub enum CosmosAuth {
    Entra,
    Key(String),
}

impl std::fmt::Debug for CosmosAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CosmosAuth::Entra => write!(f, "Entra"),
            CosmosAuth::Key(_) => write!(f, "Key(***)"),
        }
    }
}

/// A container to read, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CosmosTarget {
    pub endpoint: String,
    pub database: String,
    pub container: String,
    pub auth: CosmosAuth,
    /// The region the client routes to first (`REGION_NAME`, which Azure Functions sets).
    pub region: Option<String>,
}

impl CosmosTarget {
    /// `account/database/container`, for messages and reports (no secret in it).
    pub fn describe(&self) -> String {
        format!("{}{}/{}", self.endpoint, self.database, self.container)
    }
}

/// Why the container cannot be named or reached; each says what to set.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("function `{function}`: the cosmosDBTrigger binding in function.json has no `{key}`")]
    MissingBinding { function: String, key: &'static str },
    #[error(
        "function `{function}`: `{value}` refers to app setting `{name}`, which is not set; add it to local.settings.json `Values` (local) or to the Function App's app settings"
    )]
    UnsetSetting {
        function: String,
        value: String,
        name: String,
    },
    #[error(
        "function `{function}`: no Cosmos DB account for connection `{connection}`: set `{connection}__accountEndpoint` (Microsoft Entra: a managed identity, or your `az login`) or `{connection}` to a connection string `AccountEndpoint=...;AccountKey=...;`"
    )]
    NoAccount {
        function: String,
        connection: String,
    },
    #[error("app setting `{setting}`: {message}")]
    BadSetting { setting: String, message: String },
    #[error(
        "`{spec}` names no container: give ENDPOINT/DATABASE/CONTAINER (https://<account>.documents.azure.com:443/db/container), DATABASE/CONTAINER (same account) or CONTAINER (same database)"
    )]
    BadContainer { spec: String },
    #[error(
        "app setting `{connection}` is not set: set it to a connection string, or `{connection}__accountEndpoint` for Microsoft Entra"
    )]
    UnsetConnection { connection: String },
}

/// The container `function` reads, resolved with `setting` (the app settings).
pub fn resolve_target(
    function: &FunctionDefinition,
    setting: &dyn Fn(&str) -> Option<String>,
) -> Result<CosmosTarget, TargetError> {
    let name = &function.name;
    let binding = |value: &Option<String>, key: &'static str| {
        let value = value
            .as_deref()
            .ok_or_else(|| TargetError::MissingBinding {
                function: name.clone(),
                key,
            })?;
        expand(value, setting).map_err(|missing| TargetError::UnsetSetting {
            function: name.clone(),
            value: value.to_string(),
            name: missing,
        })
    };
    let database = binding(&function.database, "databaseName")?;
    let container = binding(&function.container, "containerName")?;
    let connection = binding(&function.connection, "connection")?;
    let region = setting("REGION_NAME").filter(|r| !r.trim().is_empty());
    let target = |endpoint: String, auth| -> Result<CosmosTarget, TargetError> {
        let endpoint =
            normalize_endpoint(&endpoint).map_err(|message| TargetError::BadSetting {
                setting: connection.clone(),
                message,
            })?;
        Ok(CosmosTarget {
            endpoint,
            database: database.clone(),
            container: container.clone(),
            auth,
            region: region.clone(),
        })
    };
    if let Some(endpoint) = setting(&format!("{connection}__accountEndpoint")) {
        return target(endpoint, CosmosAuth::Entra);
    }
    if let Some(value) = setting(&connection) {
        let (endpoint, key) =
            parse_connection_string(&value).map_err(|message| TargetError::BadSetting {
                setting: connection.clone(),
                message,
            })?;
        return target(endpoint, CosmosAuth::Key(key));
    }
    Err(TargetError::NoAccount {
        function: name.clone(),
        connection,
    })
}

/// Another container, named relative to `source` (for `verify --against`): `https://host[:port]/
/// DATABASE/CONTAINER`, `DATABASE/CONTAINER` (the same account) or `CONTAINER` (the same
/// database). Reached with `connection` (an app setting read like the trigger's: a connection
/// string, or `{connection}__accountEndpoint` for Entra) when given; otherwise with the
/// source's credential on the same account and Entra on another.
pub fn resolve_other(
    source: &CosmosTarget,
    spec: &str,
    connection: Option<&str>,
    setting: &dyn Fn(&str) -> Option<String>,
) -> Result<CosmosTarget, TargetError> {
    let bad = || TargetError::BadContainer {
        spec: spec.to_string(),
    };
    let spec_trimmed = spec.trim().trim_end_matches('/');
    let (endpoint, database, container) = if spec_trimmed.contains("://") {
        let url = url::Url::parse(spec_trimmed).map_err(|_| bad())?;
        let parts: Vec<&str> = url.path_segments().ok_or_else(bad)?.collect();
        let [database, container] = parts.as_slice() else {
            return Err(bad());
        };
        let mut endpoint = url.clone();
        endpoint.set_path("/");
        let endpoint =
            normalize_endpoint(endpoint.as_str()).map_err(|message| TargetError::BadSetting {
                setting: spec.to_string(),
                message,
            })?;
        (endpoint, database.to_string(), container.to_string())
    } else {
        match spec_trimmed.split('/').collect::<Vec<_>>().as_slice() {
            [container] if !container.is_empty() => (
                source.endpoint.clone(),
                source.database.clone(),
                container.to_string(),
            ),
            [database, container] if !database.is_empty() && !container.is_empty() => (
                source.endpoint.clone(),
                database.to_string(),
                container.to_string(),
            ),
            _ => return Err(bad()),
        }
    };
    let auth = match connection {
        Some(connection) => {
            if setting(&format!("{connection}__accountEndpoint")).is_some() {
                CosmosAuth::Entra
            } else if let Some(value) = setting(connection) {
                let (_, key) =
                    parse_connection_string(&value).map_err(|message| TargetError::BadSetting {
                        setting: connection.to_string(),
                        message,
                    })?;
                CosmosAuth::Key(key)
            } else {
                return Err(TargetError::UnsetConnection {
                    connection: connection.to_string(),
                });
            }
        }
        None if endpoint == source.endpoint => source.auth.clone(),
        None => CosmosAuth::Entra,
    };
    Ok(CosmosTarget {
        endpoint,
        database,
        container,
        auth,
        region: source.region.clone(),
    })
}

/// Replaces each `%NAME%` with the app setting; the name of the first unset one otherwise.
fn expand(value: &str, setting: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find('%') {
        let Some(len) = rest[start + 1..].find('%') else {
            break;
        };
        let name = &rest[start + 1..start + 1 + len];
        out.push_str(&rest[..start]);
        out.push_str(&setting(name).ok_or_else(|| name.to_string())?);
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `AccountEndpoint=https://...;AccountKey=...;` (the order and case of the keys are free).
fn parse_connection_string(value: &str) -> Result<(String, String), String> {
    let mut endpoint = None;
    let mut key = None;
    for part in value.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err("is not a connection string `AccountEndpoint=...;AccountKey=...;`".into());
        };
        if k.eq_ignore_ascii_case("AccountEndpoint") {
            endpoint = Some(v.to_string());
        } else if k.eq_ignore_ascii_case("AccountKey") {
            // Base64 keys end in `=`: `split_once` kept them in the value.
            key = Some(v.to_string());
        }
    }
    match (endpoint, key) {
        (Some(e), Some(k)) if !k.is_empty() => Ok((e, k)),
        (None, _) => Err("the connection string has no `AccountEndpoint=`".into()),
        _ => Err("the connection string has no `AccountKey=`".into()),
    }
}

/// `https://host[:port]/`, with the trailing slash the SDK expects.
fn normalize_endpoint(endpoint: &str) -> Result<String, String> {
    // Shown only without a key in it (a connection string pasted where the endpoint goes).
    let shown = match endpoint.to_ascii_lowercase().find("accountkey") {
        Some(at) => format!("{}AccountKey=***", &endpoint[..at]),
        None => endpoint.to_string(),
    };
    let url = url::Url::parse(endpoint.trim())
        .map_err(|e| format!("account endpoint `{shown}` is not a URL: {e}"))?;
    if url.scheme() != "https" || url.host_str().is_none() {
        return Err(format!(
            "account endpoint `{shown}` must be an https:// URL such as https://<account>.documents.azure.com:443/"
        ));
    }
    let mut s = url.to_string();
    if !s.ends_with('/') {
        s.push('/');
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn function(database: Option<&str>, container: Option<&str>) -> FunctionDefinition {
        crate::testing::function_definition("orders", database, container, Some("Cosmos"))
    }

    fn settings(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_trigger_settings_name_the_container() {
        let key = "a2V5a2V5a2V5==";
        // (binding database, app settings, expected target or error fragment)
        type Case = (
            Option<&'static str>,
            Vec<(&'static str, &'static str)>,
            Result<CosmosTarget, &'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                Some("%DB%"),
                vec![
                    ("DB", "shop"),
                    (
                        "Cosmos__accountEndpoint",
                        "https://acct.documents.azure.com:443/",
                    ),
                ],
                Ok(CosmosTarget {
                    endpoint: "https://acct.documents.azure.com/".into(),
                    database: "shop".into(),
                    container: "orders".into(),
                    auth: CosmosAuth::Entra,
                    region: None,
                }),
            ),
            (
                Some("shop"),
                vec![(
                    "Cosmos",
                    "AccountEndpoint=https://localhost:8081/;AccountKey=a2V5a2V5a2V5==;",
                )],
                Ok(CosmosTarget {
                    endpoint: "https://localhost:8081/".into(),
                    database: "shop".into(),
                    container: "orders".into(),
                    auth: CosmosAuth::Key(key.into()),
                    region: None,
                }),
            ),
            (
                Some("%DB%"),
                vec![],
                Err("app setting `DB`, which is not set"),
            ),
            (None, vec![], Err("has no `databaseName`")),
            (Some("shop"), vec![], Err("set `Cosmos__accountEndpoint`")),
            (
                Some("shop"),
                vec![("Cosmos", "AccountEndpoint=https://a/;")],
                Err("no `AccountKey=`"),
            ),
            (
                Some("shop"),
                vec![("Cosmos__accountEndpoint", "http://acct:8081/")],
                Err("must be an https:// URL"),
            ),
            (
                Some("shop"),
                vec![(
                    "Cosmos__accountEndpoint",
                    "AccountEndpoint=https://a/;AccountKey=c2VjcmV0;",
                )],
                Err("`AccountEndpoint=https://a/;AccountKey=***` is not a URL"),
            ),
        ];
        for (database, pairs, want) in cases {
            let s = settings(&pairs);
            let got = resolve_target(&function(database, Some("orders")), &|k| s.get(k).cloned());
            match (got, want) {
                (Ok(t), Ok(w)) => assert_eq!(t, w),
                (Err(e), Err(fragment)) => {
                    assert!(e.to_string().contains(fragment), "{e} lacks {fragment}")
                }
                (got, want) => panic!("{pairs:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn another_container_is_named_relative_to_the_source() {
        let source = CosmosTarget {
            endpoint: "https://a.documents.azure.com/".into(),
            database: "shop".into(),
            container: "orders".into(),
            auth: CosmosAuth::Key("k1".into()),
            region: None,
        };
        let s = settings(&[(
            "Other",
            "AccountEndpoint=https://b.documents.azure.com:443/;AccountKey=k2;",
        )]);
        let get = |n: &str| s.get(n).cloned();
        // (spec, connection, endpoint, database, container, auth)
        let cases = [
            (
                "orders2",
                None,
                "https://a.documents.azure.com/",
                "shop",
                "orders2",
                CosmosAuth::Key("k1".into()),
            ),
            (
                "shop2/orders",
                None,
                "https://a.documents.azure.com/",
                "shop2",
                "orders",
                CosmosAuth::Key("k1".into()),
            ),
            (
                "https://b.documents.azure.com:443/shop/orders",
                None,
                "https://b.documents.azure.com/",
                "shop",
                "orders",
                CosmosAuth::Entra,
            ),
            (
                "https://b.documents.azure.com/shop/orders/",
                Some("Other"),
                "https://b.documents.azure.com/",
                "shop",
                "orders",
                CosmosAuth::Key("k2".into()),
            ),
        ];
        for (spec, conn, endpoint, db, container, auth) in cases {
            let t = resolve_other(&source, spec, conn, &get).unwrap();
            assert_eq!(
                (
                    t.endpoint.as_str(),
                    t.database.as_str(),
                    t.container.as_str(),
                    t.auth
                ),
                (endpoint, db, container, auth),
                "{spec}"
            );
        }
        for bad in ["", "a/b/c", "https://b.documents.azure.com/shop", "/x"] {
            assert!(
                matches!(
                    resolve_other(&source, bad, None, &get),
                    Err(TargetError::BadContainer { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            resolve_other(&source, "x", Some("Nope"), &get),
            Err(TargetError::UnsetConnection { .. })
        ));
    }

    #[test]
    fn the_key_is_never_printed() {
        let auth = CosmosAuth::Key("c2VjcmV0".into());
        assert!(!format!("{auth:?}").contains("c2VjcmV0"));
    }
}
