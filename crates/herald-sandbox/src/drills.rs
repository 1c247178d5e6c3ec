//! Failure drills: the extra notifications a drill adds next to a real one, and the
//! "foreign" app whose key signs the copies a receiver must reject.
//!
//! Herald signs at attempt time with the app's credentials, so it cannot send a request whose
//! signature is broken by hand. What it can do honestly is sign with a key the receiver does
//! not trust: each sandbox app gets a shadow app of the same profile and the same public ids
//! (`app_id`, `seller_id`, `appid`, `mch_id`, serial) but a fresh private key or secret; the
//! `bad_signature` copy goes out through it.
//!
//! The `tampered_amount` copy tests something else, the merchant's amount check: it is signed
//! correctly with the app's own credentials (through a second shadow app holding a copy of
//! them, renewed when the app's credentials change, so that the copy can have its own retry
//! schedule) and carries a notify id of its own (a receiver that dedupes by notify id must
//! still look at it), so its signature verifies and only comparing the amount with the order
//! refuses it.
//!
//! Drill copies go out with one attempt only and no order key, so a rejection never holds up
//! the trade's real notifications.
use std::sync::Arc;

use herald_protocols::standard_webhooks::{self as sw, Keys};
use herald_protocols::{stripe, wechatpay_v2, Credentials, RetryPolicy};
use herald_store::{
    App, EventType, IdempotencyKey, NewApp, NewNotification, NotifyUrl, OrderKey,
    SandboxNotification, Store,
};

use super::model::Drills;
use super::wire::{self, Outgoing};
use herald_engine::now_ms;
use herald_http::error::ApiError;

fn meta_key(app_id: &str) -> String {
    format!("sandbox_foreign_app:{app_id}")
}

fn tamper_meta_key(app_id: &str) -> String {
    format!("sandbox_tamper_app:{app_id}")
}

fn one_attempt() -> Option<RetryPolicy> {
    Some(RetryPolicy {
        name: None,
        delays_ms: vec![],
        jitter: 0.0,
    })
}

/// Credentials with the same public ids as `c` and a different signing key or secret.
fn foreign_credentials(app: &App) -> Result<Credentials, ApiError> {
    let now = now_ms().to_seconds().get();
    let internal = |e: herald_protocols::ProfileError| ApiError::Internal(e.to_string());
    Ok(match &app.credentials {
        Credentials::StandardWebhooks(_) => {
            Credentials::StandardWebhooks(Keys::single(sw::generate_hmac_secret()))
        }
        Credentials::Stripe(s) => {
            // Another secret, the same events (api_version included).
            let mut f = stripe::Credentials::single(stripe::generate_secret());
            f.api_version = s.api_version.clone();
            Credentials::Stripe(f)
        }
        Credentials::WechatPayV2(w) => {
            let mut w = w.clone();
            w.api_key = wechatpay_v2::generate_api_key();
            Credentials::WechatPayV2(w)
        }
        Credentials::Alipay(_) | Credentials::WechatPayLegacy(_) | Credentials::Dialect(_) => {
            app.profile
                .rotate(&app.credentials, now, now)
                .map_err(internal)?
                .0
        }
        Credentials::WechatPayV3(w) => {
            // A new key pair, but the serial the receiver knows: only the signature is wrong.
            let (rotated, _) = app
                .profile
                .rotate(&app.credentials, now, now)
                .map_err(internal)?;
            match rotated {
                Credentials::WechatPayV3(mut r) => {
                    r.serial = w.serial.clone();
                    Credentials::WechatPayV3(r)
                }
                other => other,
            }
        }
    })
}

/// The id of `app`'s shadow app, created on first use.
pub async fn foreign_app(store: &Arc<dyn Store>, app: &App) -> Result<String, ApiError> {
    if let Some(id) = store.get_meta(&meta_key(&app.id)).await? {
        if store.get_app(&id).await?.is_some() {
            return Ok(id);
        }
    }
    let credentials = foreign_credentials(app)?;
    let shadow = store
        .create_app(NewApp {
            name: format!("{} (sandbox drill: untrusted key)", app.name),
            profile: app.profile,
            retry: one_attempt(),
            ack: None,
            credentials,
            now: now_ms(),
        })
        .await?;
    store.set_meta(&meta_key(&app.id), &shadow.id).await?;
    Ok(shadow.id)
}

/// The id of the app that signs `app`'s tampered copies: the same credentials (so the
/// signature verifies), one attempt. Created on first use and again whenever `app`'s
/// credentials changed (a rotation).
pub async fn tamper_app(store: &Arc<dyn Store>, app: &App) -> Result<String, ApiError> {
    if let Some(id) = store.get_meta(&tamper_meta_key(&app.id)).await? {
        if let Some(shadow) = store.get_app(&id).await? {
            if shadow.credentials == app.credentials {
                return Ok(id);
            }
        }
    }
    let shadow = store
        .create_app(NewApp {
            name: format!("{} (sandbox drill: tampered amount)", app.name),
            profile: app.profile,
            retry: one_attempt(),
            ack: None,
            credentials: app.credentials.clone(),
            now: now_ms(),
        })
        .await?;
    store
        .set_meta(&tamper_meta_key(&app.id), &shadow.id)
        .await?;
    Ok(shadow.id)
}

/// One notification to enqueue, with its role in the view.
pub struct Planned {
    pub role: &'static str,
    pub notification: SandboxNotification,
}

/// The real notification and, per the drills, its copies.
#[allow(clippy::too_many_arguments)]
pub fn plan(
    app: &App,
    foreign_app_id: Option<&str>,
    tamper_app_id: Option<&str>,
    drills: &Drills,
    out: &Outgoing,
    notify_url: &str,
    order_key: &str,
    idempotency_prefix: &str,
    notify_id: &str,
) -> Vec<Planned> {
    let now = now_ms();
    let make = |app_id: &str, payload: String, key: String, ordered: bool, nid: Option<&str>| {
        SandboxNotification {
            new: NewNotification {
                app_id: app_id.to_string(),
                // The sandbox's own trade document: checked when the trade was made.
                event_type: EventType::from_stored(out.event_type.clone()),
                payload,
                notify_url: Some(NotifyUrl::from_stored(notify_url.to_string())),
                idempotency_key: Some(IdempotencyKey::from_stored(key)),
                order_key: ordered.then(|| OrderKey::from_stored(order_key.to_string())),
                now,
            },
            notify_id: nid.map(str::to_string),
        }
    };
    let payload = out.payload.to_string();
    let mut planned = vec![Planned {
        role: "notification",
        notification: make(
            &app.id,
            payload.clone(),
            idempotency_prefix.to_string(),
            true,
            Some(notify_id),
        ),
    }];
    for i in 0..drills.duplicate.min(Drills::MAX_DUPLICATES) {
        planned.push(Planned {
            role: "duplicate",
            notification: make(
                &app.id,
                payload.clone(),
                format!("{idempotency_prefix}:duplicate:{}", i + 1),
                true,
                Some(notify_id),
            ),
        });
    }
    if let Some(foreign) = foreign_app_id {
        if drills.bad_signature {
            planned.push(Planned {
                role: "bad_signature",
                notification: make(
                    foreign,
                    payload.clone(),
                    format!("{idempotency_prefix}:bad_signature"),
                    false,
                    Some(notify_id),
                ),
            });
        }
    }
    if let (true, Some(tamper_app)) = (drills.tampered_amount, tamper_app_id) {
        let mut tampered = out.payload.clone();
        wire::tamper(app.profile, &app.credentials, &mut tampered);
        let own_id = app.profile.new_notify_id();
        planned.push(Planned {
            role: "tampered_amount",
            notification: make(
                tamper_app,
                tampered.to_string(),
                format!("{idempotency_prefix}:tampered_amount"),
                false,
                Some(own_id.as_str()),
            ),
        });
    }
    planned
}
