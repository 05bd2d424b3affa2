//! Registry credentials and the token flow. Credentials come from a docker config file (the
//! `.dockerconfigjson` key of a `kubernetes.io/dockerconfigjson` Secret, or
//! `~/.docker/config.json`), matched to the registry by host; none means anonymous. A `401`
//! names how to authenticate (`WWW-Authenticate`): `Basic` sends the credentials, `Bearer`
//! asks the named token service for a pull token (with the credentials, if any). Credentials
//! and tokens never reach a log line or an error (`Debug` shows neither).

use base64::Engine as _;
use serde::Deserialize;

/// A user name and password (or identity token) for one registry.
#[derive(Clone)]
pub(crate) struct Credentials {
    pub(crate) username: String,
    pub(crate) password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// The host[:port] a docker config key names (`https://host:port/v1/`, `host:port`).
fn key_host(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

/// The credentials `config` (a docker config file's bytes) holds for `registry`, if any.
///
/// # Errors
/// A message (never containing a secret) when the file is not a docker config or the entry
/// for `registry` cannot be decoded.
pub(crate) fn credentials_for(
    config: &[u8],
    registry: &str,
) -> Result<Option<Credentials>, String> {
    let parsed: DockerConfig = serde_json::from_slice(config).map_err(|e| {
        format!(
            "the docker config is not JSON with an `auths` map (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    // Docker Hub's credentials live under its legacy key.
    let wanted = if registry == "docker.io" || registry == "registry-1.docker.io" {
        "index.docker.io"
    } else {
        registry
    };
    let Some((_, entry)) = parsed.auths.iter().find(|(k, _)| key_host(k) == wanted) else {
        return Ok(None);
    };
    if entry.identitytoken.is_some() {
        // An OAuth refresh token (`docker login` to some cloud registries) is exchanged, not
        // sent as a password; kiln does not do that exchange.
        return Err(format!(
            "the docker config's entry for {registry} holds an identity token (OAuth refresh token), which kiln does not exchange; give a username and password (or a registry token as the password)"
        ));
    }
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(Some(Credentials {
            username: u.clone(),
            password: p.clone(),
        }));
    }
    let Some(auth) = &entry.auth else {
        return Ok(None);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|_| format!("the docker config's `auth` for {registry} is not base64"))?;
    let text = String::from_utf8(decoded)
        .map_err(|_| format!("the docker config's `auth` for {registry} is not UTF-8"))?;
    let (u, p) = text
        .split_once(':')
        .ok_or_else(|| format!("the docker config's `auth` for {registry} is not user:password"))?;
    Ok(Some(Credentials {
        username: u.to_owned(),
        password: p.to_owned(),
    }))
}

/// What a `401`'s `WWW-Authenticate` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// HTTP basic authentication.
    Basic,
    /// A bearer token from `realm`, for `service` and `scope` (when named).
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` value (`Bearer realm="…",service="…",scope="…"`, `Basic realm="…"`).
pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut realm = None;
    let mut service = None;
    let mut scope = None;
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().trim_start_matches(',').trim();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        match key.to_ascii_lowercase().as_str() {
            "realm" => realm = Some(value.to_owned()),
            "service" => service = Some(value.to_owned()),
            "scope" => scope = Some(value.to_owned()),
            _ => {}
        }
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge::Bearer {
        realm: realm?,
        service,
        scope,
    })
}

/// A token service's answer (`token`, or OAuth2's `access_token`).
#[derive(Deserialize)]
pub(crate) struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

impl TokenAnswer {
    /// The token, whichever field carried it.
    pub(crate) fn into_token(self) -> Option<String> {
        self.token.or(self.access_token).filter(|t| !t.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_entries_are_matched_by_host() {
        let auth = base64::engine::general_purpose::STANDARD.encode("kiln:s3cret");
        let config = format!(
            r#"{{"auths": {{"https://reg.example:5000/v1/": {{"auth": "{auth}"}}, "other.example": {{"username": "u", "password": "p"}}}}}}"#
        );
        let c = credentials_for(config.as_bytes(), "reg.example:5000")
            .expect("test value")
            .expect("test value");
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("kiln", "s3cret")
        );
        assert!(!format!("{c:?}").contains("s3cret"));
        let c = credentials_for(config.as_bytes(), "other.example")
            .expect("test value")
            .expect("test value");
        assert_eq!(c.password, "p");
        assert!(credentials_for(config.as_bytes(), "third.example")
            .expect("test value")
            .is_none());
        let bad =
            credentials_for(br#"{"auths": {"r": {"auth": "!!"}}}"#, "r").expect_err("an error");
        assert!(bad.contains("base64"), "{bad}");
        let secret = credentials_for(br#"{"auths": "s3cret"}"#, "r").expect_err("an error");
        assert!(!secret.contains("s3cret"), "{secret}");
    }

    #[test]
    fn challenges_parse() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:m:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:m:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None);
    }
}
