//! The injector config: one YAML/JSON shape shared by `agentvault inject
//! --config`, `agentvault webhook --config` and the Helm chart's ConfigMap.
//! Every key is optional; an unknown key is an error, so a typo never passes
//! silently as a default.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::Deserialize;

use super::InjectError;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct InjectorConfig {
    /// The sidecar image; its entrypoint is `agentvault`, which is also on `PATH`.
    pub image: String,
    pub image_pull_policy: String,
    /// The sidecar's uid and gid.
    pub run_as_user: i64,
    pub resources: ResourceRequirements,
    /// Where the sidecar's socket lives, in every container of the pod.
    pub socket_dir: String,
    /// Octal mode of the socket file.
    pub socket_mode: String,
    pub keyring: KeyringRef,
    /// Absent or null: the embedded store in an `emptyDir`.
    pub redis: Option<RedisRef>,
    pub policies: PoliciesRef,
    pub workload_api: WorkloadApiRef,
    pub metrics: MetricsConfig,
    pub log_format: LogFormat,
}

/// The Secret holding the keyring (`agentvault keygen`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct KeyringRef {
    pub secret_name: String,
    pub key: String,
}

/// Redis shared by all sidecars; the URL carries no credentials. The
/// Secrets are looked up in the pod's own namespace, so each tenant's
/// namespace holds its own ACL user (`agentvault redis-acl`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedisRef {
    pub url: String,
    /// The tenant's Redis ACL user name; absent: Redis's `default` user.
    #[serde(default)]
    pub username_secret: Option<SecretKeyRef>,
    #[serde(default)]
    pub password_secret: Option<SecretKeyRef>,
    /// TLS to a `rediss://` URL; absent: the system roots, no client certificate.
    #[serde(default)]
    pub tls: Option<RedisTlsRef>,
}

/// Where the sidecar finds the files for TLS to Redis.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedisTlsRef {
    /// The CA certificate (PEM) that signed Redis's certificate.
    #[serde(default)]
    pub ca_secret: Option<SecretKeyRef>,
    /// A `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`): the client
    /// certificate for Redis's `tls-auth-clients`.
    #[serde(default)]
    pub client_cert_secret: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

impl SecretKeyRef {
    fn check(&self, field: &str) -> Result<(), String> {
        super::check_object_name(&format!("{field}.name"), &self.name)
            .map_err(|e| e.to_string())?;
        let key_ok = !self.key.is_empty()
            && self.key.len() <= 253
            && self
                .key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !key_ok {
            return Err(format!(
                "{field}.key must be a Secret key (letters, digits, `-`, `_`, `.`)"
            ));
        }
        Ok(())
    }
}

/// The ConfigMap of Rego policies; `None` runs the built-in policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PoliciesRef {
    pub config_map: Option<String>,
}

/// The SPIFFE Workload API, from the SPIFFE CSI driver.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct WorkloadApiRef {
    pub csi_driver: String,
    pub mount_path: String,
    pub socket_name: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// 0 turns metrics off.
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for InjectorConfig {
    fn default() -> Self {
        let quantities = |cpu: &str, memory: &str| {
            BTreeMap::from([
                ("cpu".to_owned(), Quantity(cpu.to_owned())),
                ("memory".to_owned(), Quantity(memory.to_owned())),
            ])
        };
        Self {
            image: format!(
                "ghcr.io/agentvault/agentvault:{}",
                env!("CARGO_PKG_VERSION")
            ),
            image_pull_policy: "IfNotPresent".to_owned(),
            run_as_user: 65532,
            resources: ResourceRequirements {
                requests: Some(quantities("50m", "64Mi")),
                limits: Some(quantities("500m", "256Mi")),
                ..Default::default()
            },
            socket_dir: "/run/agentvault".to_owned(),
            socket_mode: "0666".to_owned(),
            keyring: KeyringRef::default(),
            redis: None,
            policies: PoliciesRef::default(),
            workload_api: WorkloadApiRef::default(),
            metrics: MetricsConfig::default(),
            log_format: LogFormat::Json,
        }
    }
}

impl Default for KeyringRef {
    fn default() -> Self {
        Self {
            secret_name: "agentvault-keyring".to_owned(),
            key: "keyring.json".to_owned(),
        }
    }
}

impl Default for PoliciesRef {
    fn default() -> Self {
        Self {
            config_map: Some("agentvault-policies".to_owned()),
        }
    }
}

impl Default for WorkloadApiRef {
    fn default() -> Self {
        Self {
            csi_driver: "csi.spiffe.io".to_owned(),
            mount_path: "/spiffe-workload-api".to_owned(),
            socket_name: "spire-agent.sock".to_owned(),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { port: 9464 }
    }
}

impl InjectorConfig {
    /// Reads a YAML (or JSON) file and checks what serde cannot.
    pub fn load(path: &Path) -> Result<Self, InjectError> {
        let fail = |reason: String| InjectError::Config {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        Self::parse(&text).map_err(|e| match e {
            InjectError::Config { reason, .. } => fail(reason),
            other => other,
        })
    }

    /// Parses the config's text; an empty text is the defaults.
    pub fn parse(text: &str) -> Result<Self, InjectError> {
        let fail = |reason: String| InjectError::Config {
            path: "injector config".to_owned(),
            reason,
        };
        let config: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            serde_yaml_ng::from_str::<Option<Self>>(text)
                .map_err(|e| fail(e.to_string()))?
                .unwrap_or_default()
        };
        config.validate().map_err(fail)?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let absolute = |field: &str, path: &str| {
            if path.starts_with('/') && !path.contains("..") {
                Ok(())
            } else {
                Err(format!("{field} must be an absolute path, not `{path}`"))
            }
        };
        absolute("socketDir", &self.socket_dir)?;
        absolute("workloadApi.mountPath", &self.workload_api.mount_path)?;
        if self.image.is_empty() {
            return Err("image must not be empty".to_owned());
        }
        if u32::from_str_radix(&self.socket_mode, 8).map_or(true, |m| m > 0o777) {
            return Err(format!(
                "socketMode must be an octal file mode such as \"0666\", not `{}`",
                self.socket_mode
            ));
        }
        super::check_object_name("keyring.secretName", &self.keyring.secret_name)
            .map_err(|e| e.to_string())?;
        if self.keyring.key.is_empty() || self.keyring.key.contains('/') {
            return Err("keyring.key must be a file name".to_owned());
        }
        if let Some(name) = &self.policies.config_map {
            super::check_object_name("policies.configMap", name).map_err(|e| e.to_string())?;
        }
        if let Some(redis) = &self.redis {
            if !(redis.url.starts_with("redis://")
                || redis.url.starts_with("rediss://")
                || redis.url.starts_with("redis+cluster://"))
            {
                return Err("redis.url must be a redis:// URL".to_owned());
            }
            if redis.url.contains('@') {
                return Err(
                    "redis.url must not carry credentials: use redis.passwordSecret".to_owned(),
                );
            }
            for (field, secret) in [
                ("redis.usernameSecret", &redis.username_secret),
                ("redis.passwordSecret", &redis.password_secret),
                (
                    "redis.tls.caSecret",
                    &redis.tls.as_ref().and_then(|t| t.ca_secret.clone()),
                ),
            ] {
                if let Some(secret) = secret {
                    secret.check(field)?;
                }
            }
            if let Some(tls) = &redis.tls {
                if !redis.url.starts_with("rediss://") {
                    return Err("redis.tls needs a rediss:// URL".to_owned());
                }
                if let Some(name) = &tls.client_cert_secret {
                    super::check_object_name("redis.tls.clientCertSecret", name)
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_text_is_the_defaults() {
        assert_eq!(
            InjectorConfig::parse("").unwrap(),
            InjectorConfig::default()
        );
        assert_eq!(
            InjectorConfig::parse("null\n").unwrap(),
            InjectorConfig::default()
        );
    }

    #[test]
    fn reads_the_documented_shape() {
        let text = r#"
image: ghcr.io/agentvault/agentvault:0.1.0
imagePullPolicy: Always
runAsUser: 1000
resources:
  requests: {cpu: 10m, memory: 32Mi}
  limits: {cpu: 100m, memory: 128Mi}
socketDir: /run/av
socketMode: "0660"
keyring: {secretName: team-keyring, key: ring.json}
redis:
  url: redis://agentvault-redis.agentvault.svc:6379/
  passwordSecret: {name: agentvault-redis, key: password}
policies: {configMap: null}
workloadApi: {csiDriver: csi.example.org, mountPath: /wl, socketName: agent.sock}
metrics: {port: 0}
logFormat: text
"#;
        let c = InjectorConfig::parse(text).unwrap();
        assert_eq!(c.image_pull_policy, "Always");
        assert_eq!(c.run_as_user, 1000);
        assert_eq!(c.socket_dir, "/run/av");
        assert_eq!(c.keyring.secret_name, "team-keyring");
        assert_eq!(
            c.redis.unwrap().password_secret.unwrap(),
            SecretKeyRef {
                name: "agentvault-redis".into(),
                key: "password".into()
            }
        );
        assert_eq!(c.policies.config_map, None);
        assert_eq!(c.workload_api.socket_name, "agent.sock");
        assert_eq!(c.metrics.port, 0);
        assert_eq!(c.log_format, LogFormat::Text);
        let requests = c.resources.requests.unwrap();
        assert_eq!(requests["cpu"], Quantity("10m".into()));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        for (text, needle) in [
            ("imagePullPolicyy: Always", "imagePullPolicyy"),
            ("keyring: {secret: x}", "secret"),
            ("socketMode: \"999\"", "socketMode"),
            ("socketDir: run/av", "socketDir"),
            ("redis: {url: \"redis://:pw@redis:6379/\"}", "credentials"),
            ("keyring: {secretName: Bad_Name}", "keyring.secretName"),
            (
                "redis: {url: \"redis://r:6379/\", usernameSecret: {name: r, key: \"a/b\"}}",
                "redis.usernameSecret.key",
            ),
            (
                "redis: {url: \"redis://r:6379/\", tls: {caSecret: {name: ca, key: ca.crt}}}",
                "rediss://",
            ),
            (
                "redis: {url: \"rediss://r:6379/\", tls: {clientCertSecret: Bad}}",
                "redis.tls.clientCertSecret",
            ),
        ] {
            let err = InjectorConfig::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn the_default_redis_is_the_embedded_store() {
        assert_eq!(InjectorConfig::default().redis, None);
        assert_eq!(
            InjectorConfig::default().policies.config_map.as_deref(),
            Some("agentvault-policies")
        );
    }
}
