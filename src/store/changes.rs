//! Change notifications: which of a tenant's records changed, announced by
//! the store itself in the same atomic step as the change, to every sidecar
//! sharing it. The sealed-record cache (`cache.rs`) is one consumer; anything
//! that must react to a write elsewhere in the fleet (pushing secrets to
//! Envoy, say) can subscribe the same way.

use std::fmt;
use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{Stream, StreamExt};

use super::Store;

/// Waits between attempts to subscribe again after a subscription failed or
/// was lost: from the first, doubling up to the second.
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(100);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(5);

/// One announcement on a tenant's change stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The secret at this path changed: a new version, a rollback or
    /// rotation, new metadata or expiry, or its deletion (with its grants).
    Secret(String),
    /// A grant was made or revoked, or grants went with a deleted secret.
    Grants,
    /// A token was issued or an approval decided. Spending a token's use is
    /// not announced: token checks always ask the store.
    Tokens,
    /// Announcements may have been lost (a slow reader fell behind, or an
    /// announcement could not be read): anything may have changed.
    Resync,
}

impl Change {
    /// The announcement as published on the wire: `s:<path>`, `g` or `t`.
    pub(crate) fn encode(&self) -> String {
        match self {
            Self::Secret(path) => format!("s:{path}"),
            Self::Grants => "g".to_owned(),
            Self::Tokens => "t".to_owned(),
            Self::Resync => "r".to_owned(),
        }
    }

    /// Reads a published announcement; anything unreadable means "assume
    /// everything changed", never "nothing did".
    pub(crate) fn decode(wire: &[u8]) -> Self {
        match wire {
            b"g" => Self::Grants,
            b"t" => Self::Tokens,
            [b's', b':', path @ ..] => match std::str::from_utf8(path) {
                Ok(path) if !path.is_empty() => Self::Secret(path.to_owned()),
                _ => Self::Resync,
            },
            _ => Self::Resync,
        }
    }
}

/// A tenant's change announcements, in the order the store applied them.
/// Ends when the subscription is lost.
pub struct ChangeStream {
    inner: Pin<Box<dyn Stream<Item = Change> + Send>>,
}

impl ChangeStream {
    pub fn new(stream: impl Stream<Item = Change> + Send + 'static) -> Self {
        Self {
            inner: Box::pin(stream),
        }
    }

    /// The next announcement; `None` once the subscription is lost.
    pub async fn next(&mut self) -> Option<Change> {
        self.inner.next().await
    }
}

impl Stream for ChangeStream {
    type Item = Change;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Change>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl fmt::Debug for ChangeStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChangeStream")
    }
}

/// Follows `tenant`'s announcements for as long as `follow` wants them:
/// hands it each subscription's stream, and when that ends (the subscription
/// was lost) or subscribing fails, waits with backoff and subscribes again.
/// `follow` returns `Break` to stop for good; `consumer` names it in the logs.
pub async fn follow_changes<F, Fut>(store: &dyn Store, tenant: &str, consumer: &str, mut follow: F)
where
    F: FnMut(ChangeStream) -> Fut,
    Fut: Future<Output = ControlFlow<()>>,
{
    let mut wait = RESUBSCRIBE_MIN;
    loop {
        match store.changes(tenant).await {
            Ok(changes) => {
                wait = RESUBSCRIBE_MIN;
                if follow(changes).await.is_break() {
                    return;
                }
                tracing::warn!(
                    tenant,
                    consumer,
                    "change subscription lost; subscribing again"
                );
            }
            Err(e) => {
                tracing::warn!(tenant, consumer, error = %e, "cannot subscribe to changes");
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RESUBSCRIBE_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_survive_the_wire() {
        for change in [
            Change::Secret("prod/db/password".into()),
            Change::Grants,
            Change::Tokens,
            Change::Resync,
        ] {
            assert_eq!(Change::decode(change.encode().as_bytes()), change);
        }
    }

    #[test]
    fn an_unreadable_announcement_means_everything_changed() {
        for wire in [&b""[..], b"s:", b"x", b"s:\xff", b"grants"] {
            assert_eq!(Change::decode(wire), Change::Resync);
        }
    }
}
