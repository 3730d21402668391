//! Sidecar injection: the one pure function both `agentvault inject` and the
//! admission webhook use, so they can never disagree.
//!
//! [`plan`] takes a pod (or a pod template: `metadata` + `spec`) as JSON and
//! answers what to do with it: leave it (and why), or a JSONPatch of `add`
//! operations. The CLI applies the patch itself; the webhook hands it to the
//! API server. Everything added references Secrets and ConfigMaps by name:
//! no secret value ever enters the pod spec or the patch.

mod config;
pub mod manifests;
mod patch;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    CSIVolumeSource, Capabilities, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction, KeyToPath, PodSpec, PodTemplateSpec,
    Probe, SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext, Volume,
    VolumeMount,
};
use serde_json::Value;

use crate::identity::RoleRule;

pub use config::{
    InjectorConfig, KeyringRef, LogFormat, MetricsConfig, PoliciesRef, RedisRef, RedisTlsRef,
    SecretKeyRef, WorkloadApiRef,
};
pub use json_patch::Patch;

pub const ANNOTATION_INJECT: &str = "agentvault.io/inject";
pub const ANNOTATION_STATUS: &str = "agentvault.io/status";
pub const ANNOTATION_KEYRING_SECRET: &str = "agentvault.io/keyring-secret";
pub const ANNOTATION_POLICY_CONFIGMAP: &str = "agentvault.io/policy-configmap";
/// `agentvault.io/role.<name>: "uid:1001"` (also `gid:N`, `exe:/path`, or
/// several, comma-separated).
pub const ANNOTATION_ROLE_PREFIX: &str = "agentvault.io/role.";
pub const STATUS_INJECTED: &str = "injected";

pub const CONTAINER_NAME: &str = "agentvault";
pub const SOCKET_VOLUME: &str = "agentvault-socket";
pub const WORKLOAD_API_VOLUME: &str = "spiffe-workload-api";
pub const KEYRING_VOLUME: &str = "agentvault-keyring";
pub const POLICIES_VOLUME: &str = "agentvault-policies";
pub const DATA_VOLUME: &str = "agentvault-data";
pub const REDIS_CA_VOLUME: &str = "agentvault-redis-ca";
pub const REDIS_CLIENT_VOLUME: &str = "agentvault-redis-client";
/// Where the keyring Secret is mounted (read-only) in the sidecar.
pub const KEYRING_DIR: &str = "/etc/agentvault/keyring";
/// Where the policies ConfigMap is mounted (read-only) in the sidecar.
pub const POLICIES_DIR: &str = "/etc/agentvault/policies";
/// The embedded store's `emptyDir`, when no Redis is configured.
pub const DATA_DIR: &str = "/var/lib/agentvault";
/// Where the CA of Redis's certificate is mounted, as `ca.crt`.
pub const REDIS_CA_DIR: &str = "/etc/agentvault/redis-ca";
/// Where the client certificate for Redis is mounted (`tls.crt`, `tls.key`).
pub const REDIS_CLIENT_DIR: &str = "/etc/agentvault/redis-client";
pub const SOCKET_FILE: &str = "agentvault.sock";
pub const METRICS_PORT_NAME: &str = "av-metrics";

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("annotation {annotation}: {reason}")]
    Annotation { annotation: String, reason: String },
    #[error("{0}")]
    Conflict(String),
    #[error("not a pod: {0}")]
    NotAPod(String),
    #[error("{path}: {reason}")]
    Config { path: String, reason: String },
    #[error("{what}: {reason}")]
    InvalidName { what: String, reason: String },
    #[error("internal: {0}")]
    Internal(String),
}

/// Which pods are injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// Only pods that opt in (`agentvault.io/inject: "true"`, as an
    /// annotation or a label).
    OptIn,
    /// Every pod that does not opt out (`"false"`): `inject --all`, and
    /// namespaces labelled `agentvault.io/inject=enabled`.
    OptOut,
}

/// Why a pod is left as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    NotOptedIn,
    OptedOut,
    /// The pod already has the `agentvault` container: injection is idempotent.
    AlreadyInjected,
    /// A workload without a pod template (a partial manifest, a kustomize patch).
    NoPodTemplate,
}

impl Skip {
    pub fn reason(self) -> &'static str {
        match self {
            Self::NotOptedIn => "the pod does not opt in (agentvault.io/inject)",
            Self::OptedOut => "the pod opts out (agentvault.io/inject: \"false\")",
            Self::AlreadyInjected => "the pod already has the agentvault sidecar",
            Self::NoPodTemplate => "it has no pod template",
        }
    }
}

/// The pure injection's result for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Injection {
    Injected(Box<PodTemplateSpec>),
    Skipped(Skip),
}

/// What to do with one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Skip(Skip),
    Patch(Patch),
}

/// Decides injection for a pod or pod template given as JSON (`metadata` and
/// `spec`; other keys are ignored and kept) and returns the patch that
/// injects it. Pure: the same pod and config always give the same patch.
///
/// The patch is the difference between the typed pod before and after
/// injection, both as k8s-openapi writes them, so it holds exactly what
/// injection added; applied to the pod as given, it keeps every field this
/// build does not know.
pub fn plan(
    pod: &Value,
    config: &InjectorConfig,
    selection: Selection,
) -> Result<Plan, InjectError> {
    let template: PodTemplateSpec = serde_path_to_error::deserialize(pod)
        .map_err(|e| InjectError::NotAPod(json_shape_error(&e)))?;
    match inject(&template, config, selection)? {
        Injection::Injected(injected) => {
            let before = to_json(&template)?;
            let after = to_json(&injected)?;
            Ok(Plan::Patch(patch::additions(&before, &after)?))
        }
        Injection::Skipped(skip) => Ok(Plan::Skip(skip)),
    }
}

/// Applies [`plan`] to `pod` in place; answers what was skipped, if anything.
pub fn inject_value(
    pod: &mut Value,
    config: &InjectorConfig,
    selection: Selection,
) -> Result<Option<Skip>, InjectError> {
    match plan(pod, config, selection)? {
        Plan::Skip(skip) => Ok(Some(skip)),
        Plan::Patch(patch) => {
            json_patch::patch(pod, &patch).map_err(|e| InjectError::Internal(e.to_string()))?;
            Ok(None)
        }
    }
}

/// Names where a JSON document does not fit its type, never echoing the
/// value found there (a pod's env may hold anything).
pub(crate) fn json_shape_error(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let inner = e.inner().to_string();
    let what = if inner.starts_with("missing field") {
        inner
    } else {
        "a value of the wrong type".to_owned()
    };
    match e.path().to_string().as_str() {
        "." => what,
        path => format!("{what} at `{path}`"),
    }
}

fn to_json(template: &PodTemplateSpec) -> Result<Value, InjectError> {
    serde_json::to_value(template).map_err(|e| InjectError::Internal(e.to_string()))
}

/// The pure injection: the pod with the sidecar, or why it is left alone.
pub fn inject(
    pod: &PodTemplateSpec,
    config: &InjectorConfig,
    selection: Selection,
) -> Result<Injection, InjectError> {
    let empty = BTreeMap::new();
    let metadata = pod.metadata.as_ref();
    let annotations = metadata
        .and_then(|m| m.annotations.as_ref())
        .unwrap_or(&empty);
    let labels = metadata.and_then(|m| m.labels.as_ref()).unwrap_or(&empty);
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| InjectError::NotAPod("it has no spec".to_owned()))?;
    match (opt_in(annotations, labels)?, selection) {
        (Some(false), _) => return Ok(Injection::Skipped(Skip::OptedOut)),
        (None, Selection::OptIn) => return Ok(Injection::Skipped(Skip::NotOptedIn)),
        _ => {}
    }
    let has_sidecar = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == CONTAINER_NAME);
    if has_sidecar {
        return Ok(Injection::Skipped(Skip::AlreadyInjected));
    }
    let settings = PodSettings::from_annotations(annotations, config)?;
    let mut out = pod.clone();
    let spec = out.spec.get_or_insert_with(PodSpec::default);
    for volume in volumes(config, &settings) {
        let volumes = spec.volumes.get_or_insert_with(Vec::new);
        if volumes.iter().any(|v| v.name == volume.name) {
            return Err(InjectError::Conflict(format!(
                "the pod already has a volume named {}",
                volume.name
            )));
        }
        volumes.push(volume);
    }
    let socket_env = EnvVar {
        name: "AGENTVAULT_SOCKET".to_owned(),
        value: Some(socket_path(config)),
        ..Default::default()
    };
    let socket_mount = VolumeMount {
        name: SOCKET_VOLUME.to_owned(),
        mount_path: config.socket_dir.clone(),
        ..Default::default()
    };
    for container in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        let mounts = container.volume_mounts.get_or_insert_with(Vec::new);
        if mounts.iter().any(|m| m.mount_path == config.socket_dir) {
            return Err(InjectError::Conflict(format!(
                "container {} already mounts something at {}",
                container.name, config.socket_dir
            )));
        }
        mounts.push(socket_mount.clone());
        let env = container.env.get_or_insert_with(Vec::new);
        if !env.iter().any(|e| e.name == socket_env.name) {
            env.push(socket_env.clone());
        }
    }
    spec.init_containers
        .get_or_insert_with(Vec::new)
        .insert(0, sidecar(config, &settings));
    out.metadata
        .get_or_insert_with(Default::default)
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(ANNOTATION_STATUS.to_owned(), STATUS_INJECTED.to_owned());
    Ok(Injection::Injected(Box::new(out)))
}

/// `Some(true)` opts in, `Some(false)` out; the annotation wins over the
/// label (a webhook `objectSelector` can only see labels).
fn opt_in(
    annotations: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> Result<Option<bool>, InjectError> {
    let Some(value) = annotations
        .get(ANNOTATION_INJECT)
        .or_else(|| labels.get(ANNOTATION_INJECT))
    else {
        return Ok(None);
    };
    match value.as_str() {
        "true" => Ok(Some(true)),
        "false" => Ok(Some(false)),
        other => Err(InjectError::Annotation {
            annotation: ANNOTATION_INJECT.to_owned(),
            reason: format!("must be \"true\" or \"false\", not {other:?}"),
        }),
    }
}

/// What a pod's annotations choose, over the injector config.
#[derive(Debug)]
struct PodSettings {
    roles: Vec<RoleRule>,
    keyring_secret: String,
    policy_config_map: Option<String>,
}

impl PodSettings {
    fn from_annotations(
        annotations: &BTreeMap<String, String>,
        config: &InjectorConfig,
    ) -> Result<Self, InjectError> {
        let mut roles = Vec::new();
        for (key, value) in annotations {
            let Some(role) = key.strip_prefix(ANNOTATION_ROLE_PREFIX) else {
                continue;
            };
            for matcher in value.split(',').map(str::trim) {
                let rule = format!("{role}={matcher}").parse::<RoleRule>().map_err(|_| {
                    InjectError::Annotation {
                        annotation: key.clone(),
                        reason: format!(
                            "{matcher:?} is not uid:N, gid:N or exe:/absolute/path (or the role name is not valid)"
                        ),
                    }
                })?;
                roles.push(rule);
            }
        }
        let keyring_secret = match annotations.get(ANNOTATION_KEYRING_SECRET) {
            Some(name) => {
                check_object_name(ANNOTATION_KEYRING_SECRET, name)?;
                name.clone()
            }
            None => config.keyring.secret_name.clone(),
        };
        let policy_config_map = match annotations.get(ANNOTATION_POLICY_CONFIGMAP) {
            Some(name) if name.is_empty() => None,
            Some(name) => {
                check_object_name(ANNOTATION_POLICY_CONFIGMAP, name)?;
                Some(name.clone())
            }
            None => config.policies.config_map.clone(),
        };
        Ok(Self {
            roles,
            keyring_secret,
            policy_config_map,
        })
    }
}

/// A Kubernetes object name (DNS-1123 subdomain).
pub(crate) fn check_object_name(what: &str, name: &str) -> Result<(), InjectError> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if valid {
        Ok(())
    } else {
        Err(InjectError::InvalidName {
            what: what.to_owned(),
            reason: format!("{name:?} is not a valid object name (lowercase DNS-1123 subdomain)"),
        })
    }
}

fn socket_path(config: &InjectorConfig) -> String {
    format!("{}/{SOCKET_FILE}", config.socket_dir.trim_end_matches('/'))
}

fn volumes(config: &InjectorConfig, settings: &PodSettings) -> Vec<Volume> {
    let mut volumes = vec![
        Volume {
            name: SOCKET_VOLUME.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: WORKLOAD_API_VOLUME.to_owned(),
            csi: Some(CSIVolumeSource {
                driver: config.workload_api.csi_driver.clone(),
                read_only: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: KEYRING_VOLUME.to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(settings.keyring_secret.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    if let Some(name) = &settings.policy_config_map {
        volumes.push(Volume {
            name: POLICIES_VOLUME.to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let redis_tls = config.redis.as_ref().and_then(|r| r.tls.as_ref());
    if let Some(ca) = redis_tls.and_then(|t| t.ca_secret.as_ref()) {
        volumes.push(Volume {
            name: REDIS_CA_VOLUME.to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(ca.name.clone()),
                items: Some(vec![KeyToPath {
                    key: ca.key.clone(),
                    path: "ca.crt".to_owned(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if let Some(name) = redis_tls.and_then(|t| t.client_cert_secret.as_ref()) {
        volumes.push(Volume {
            name: REDIS_CLIENT_VOLUME.to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(name.clone()),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if config.redis.is_none() {
        volumes.push(Volume {
            name: DATA_VOLUME.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        });
    }
    volumes
}

/// The sidecar: `agentvault serve` with flags only, as a native sidecar
/// (an init container with `restartPolicy: Always`, Kubernetes >= 1.29).
fn sidecar(config: &InjectorConfig, settings: &PodSettings) -> Container {
    let socket = socket_path(config);
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--socket".into(),
        socket.clone(),
        "--socket-mode".into(),
        config.socket_mode.clone(),
        "--keyring".into(),
        format!("{KEYRING_DIR}/{}", config.keyring.key),
    ];
    if settings.policy_config_map.is_some() {
        args.extend(["--policy-dir".into(), POLICIES_DIR.into()]);
    }
    if config.redis.is_none() {
        args.extend(["--data-dir".into(), DATA_DIR.into()]);
    }
    let redis_tls = config.redis.as_ref().and_then(|r| r.tls.as_ref());
    if redis_tls.is_some_and(|t| t.ca_secret.is_some()) {
        args.extend([
            "--redis-tls-ca-file".into(),
            format!("{REDIS_CA_DIR}/ca.crt"),
        ]);
    }
    if redis_tls.is_some_and(|t| t.client_cert_secret.is_some()) {
        args.extend([
            "--redis-tls-cert-file".into(),
            format!("{REDIS_CLIENT_DIR}/tls.crt"),
            "--redis-tls-key-file".into(),
            format!("{REDIS_CLIENT_DIR}/tls.key"),
        ]);
    }
    args.extend([
        "--metrics-addr".into(),
        match config.metrics.port {
            0 => "off".to_owned(),
            port => format!("0.0.0.0:{port}"),
        },
    ]);
    args.extend([
        "--log-format".into(),
        match config.log_format {
            LogFormat::Json => "json".into(),
            LogFormat::Text => "text".into(),
        },
    ]);
    for rule in &settings.roles {
        args.extend(["--role".into(), rule.to_string()]);
    }
    let mut env = vec![EnvVar {
        name: "SPIFFE_ENDPOINT_SOCKET".to_owned(),
        value: Some(format!(
            "unix://{}/{}",
            config.workload_api.mount_path.trim_end_matches('/'),
            config.workload_api.socket_name
        )),
        ..Default::default()
    }];
    if let Some(redis) = &config.redis {
        env.push(EnvVar {
            name: "AGENTVAULT_REDIS_URL".to_owned(),
            value: Some(redis.url.clone()),
            ..Default::default()
        });
        let from_secret = |name: &str, secret: &SecretKeyRef| EnvVar {
            name: name.to_owned(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.name.clone(),
                    key: secret.key.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        if let Some(secret) = &redis.username_secret {
            env.push(from_secret("AGENTVAULT_REDIS_USERNAME", secret));
        }
        if let Some(secret) = &redis.password_secret {
            env.push(from_secret("AGENTVAULT_REDIS_PASSWORD", secret));
        }
    }
    let read_only = |name: &str, path: &str| VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(true),
        ..Default::default()
    };
    let mut mounts = vec![
        VolumeMount {
            name: SOCKET_VOLUME.to_owned(),
            mount_path: config.socket_dir.clone(),
            ..Default::default()
        },
        read_only(WORKLOAD_API_VOLUME, &config.workload_api.mount_path),
        read_only(KEYRING_VOLUME, KEYRING_DIR),
    ];
    if settings.policy_config_map.is_some() {
        mounts.push(read_only(POLICIES_VOLUME, POLICIES_DIR));
    }
    if redis_tls.is_some_and(|t| t.ca_secret.is_some()) {
        mounts.push(read_only(REDIS_CA_VOLUME, REDIS_CA_DIR));
    }
    if redis_tls.is_some_and(|t| t.client_cert_secret.is_some()) {
        mounts.push(read_only(REDIS_CLIENT_VOLUME, REDIS_CLIENT_DIR));
    }
    if config.redis.is_none() {
        mounts.push(VolumeMount {
            name: DATA_VOLUME.to_owned(),
            mount_path: DATA_DIR.to_owned(),
            ..Default::default()
        });
    }
    let ports = (config.metrics.port != 0).then(|| {
        vec![ContainerPort {
            name: Some(METRICS_PORT_NAME.to_owned()),
            container_port: i32::from(config.metrics.port),
            protocol: Some("TCP".to_owned()),
            ..Default::default()
        }]
    });
    Container {
        name: CONTAINER_NAME.to_owned(),
        image: Some(config.image.clone()),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        restart_policy: Some("Always".to_owned()),
        args: Some(args),
        env: Some(env),
        ports,
        resources: Some(config.resources.clone()),
        volume_mounts: Some(mounts),
        // Passes once the socket answers `GET /v1/health` with 200, that is
        // once the SVID has arrived and the store answers: only then do the
        // app containers start.
        startup_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec![
                    "agentvault".into(),
                    "health".into(),
                    "--socket".into(),
                    socket,
                ]),
            }),
            period_seconds: Some(1),
            timeout_seconds: Some(5),
            failure_threshold: Some(300),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(config.run_as_user),
            run_as_group: Some(config.run_as_user),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
