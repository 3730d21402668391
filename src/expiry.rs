//! Expiry warnings: every sidecar looks for secrets nearing their
//! `expires_at` on an interval; the one that claims a warning in the shared
//! store logs it, counts it, and posts it to the configured webhook.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::json;

use crate::metrics::Metrics;
use crate::vault::{ExpiryWarning, Vault};

/// How long one webhook call may take.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Notifier {
    vault: Arc<Vault>,
    metrics: Arc<Metrics>,
    webhook: Option<(reqwest::Client, String)>,
}

impl Notifier {
    pub fn new(vault: Arc<Vault>, metrics: Arc<Metrics>, webhook_url: Option<String>) -> Self {
        let webhook = webhook_url.and_then(|url| {
            match reqwest::Client::builder().timeout(WEBHOOK_TIMEOUT).build() {
                Ok(client) => Some((client, url)),
                Err(e) => {
                    tracing::error!(error = %e, "cannot build the expiry webhook client; warnings will only be logged");
                    None
                }
            }
        });
        Self {
            vault,
            metrics,
            webhook,
        }
    }

    /// Checks once: claims due warnings and sends each.
    pub async fn check(&self) {
        match self.vault.claim_expiry_warnings(Utc::now()).await {
            Ok(warnings) => {
                for warning in warnings {
                    self.send(&warning).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "expiry check failed; will retry"),
        }
    }

    async fn send(&self, warning: &ExpiryWarning) {
        let tenant = &self.vault.workload().tenant;
        tracing::warn!(
            event = "secret.expiring", tenant = %tenant, path = %warning.path,
            expires_at = %warning.expires_at.to_rfc3339(), window = warning.window,
            "secret expires soon"
        );
        self.metrics.expiry_warning(warning.window);
        let Some((client, url)) = &self.webhook else {
            return;
        };
        let body = json!({
            "event": "secret.expiring",
            "tenant": tenant,
            "path": warning.path,
            "expires_at": warning.expires_at.to_rfc3339(),
            "window": warning.window,
        });
        match client.post(url).json(&body).send().await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                tracing::error!(status = r.status().as_u16(), path = %warning.path, "expiry webhook refused the warning")
            }
            Err(e) => {
                tracing::error!(error = %e, path = %warning.path, "expiry webhook unreachable")
            }
        }
    }

    /// Checks every `interval` until the task is dropped.
    pub async fn run(self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.check().await;
        }
    }
}
