//! Trade transitions and what each one enqueues: create, pay, close (cancel or unpaid
//! timeout), refund, and drills. Every transition is one store write holding the new trade
//! document and its notifications (atomic, version-checked); the notifications carry the
//! trade as order key, so one trade's notifications reach the merchant in order.
use herald_protocols::Profile;
use herald_store::{App, SandboxWrite, StoreError, UnixMillis};
use serde_json::Value;

use super::drills::{self, Planned};
use super::model::{Drills, Enqueued, Event, EventKind, Payment, Refund, RefundStatus, TradeState};
use super::wire::{self, Outgoing};
use super::Sandbox;
use herald_engine::now_ms;
use herald_http::error::ApiError;

/// What a refund request asks for.
pub struct RefundRequest {
    pub amount: i64,
    pub out_refund_no: Option<String>,
    /// How the refund ends (WeChat Pay v3 reports abnormal and closed refunds too).
    pub status: RefundStatus,
    /// Where the refund's notification goes instead of the payment's `notify_url` (WeChat
    /// Pay's refund requests may name one).
    pub notify_url: Option<String>,
}

fn corrupt(e: serde_json::Error) -> ApiError {
    ApiError::Internal(format!("a stored sandbox payment cannot be read: {e}"))
}

impl Sandbox {
    /// The payment and the store version it was read at.
    pub(super) async fn load(&self, id: &str) -> Result<(Payment, i64), ApiError> {
        let row = self
            .store()
            .get_sandbox_payment(id)
            .await?
            .ok_or(ApiError::NotFound("sandbox payment"))?;
        Ok((Payment::from_row(&row).map_err(corrupt)?, row.version))
    }

    pub(super) async fn app(&self, id: &str) -> Result<App, ApiError> {
        self.store().get_app(id).await?.ok_or_else(|| {
            ApiError::Invalid(format!("no app {id:?}; create it with POST /v1/apps"))
        })
    }

    /// Inserts a new payment (its terms already validated).
    pub(super) async fn insert(&self, payment: &Payment) -> Result<(), ApiError> {
        let _guard = self.inner.lock.lock().await;
        self.store()
            .write_sandbox_payment(SandboxWrite {
                payment: payment.to_row().map_err(corrupt)?,
                expected_version: None,
                notifications: vec![],
            })
            .await?;
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Pays a waiting trade: TRADE_SUCCESS and the payment notification. Returns the payment
    /// and whether this call paid it (false: it was already paid, nothing was sent again).
    pub(super) async fn pay(&self, id: &str) -> Result<(Payment, bool), ApiError> {
        let _guard = self.inner.lock.lock().await;
        let (mut p, version) = self.load(id).await?;
        match p.state {
            TradeState::TradeSuccess | TradeState::TradeFinished => return Ok((p, false)),
            TradeState::TradeClosed if p.paid_at.is_some() => return Ok((p, false)),
            TradeState::TradeClosed => {
                return Err(ApiError::Conflict(
                    "the trade is closed and can no longer be paid".into(),
                ))
            }
            // Past its deadline but not yet closed by the timer: it can't be paid either.
            TradeState::WaitBuyerPay if now_ms() >= p.expires_at => {
                self.inner.wake.notify_one();
                return Err(ApiError::Conflict(
                    "the payment expired unpaid and can no longer be paid".into(),
                ));
            }
            TradeState::WaitBuyerPay => {}
        }
        let app = self.app(&p.app_id).await?;
        let now = now_ms();
        p.state = TradeState::TradeSuccess;
        p.paid_at = Some(now);
        p.buyer = Some(wire::new_buyer());
        let out = wire::paid(&p, &app.credentials);
        let mut event = new_event(&p, &app, EventKind::Paid, now, Some(out), None);
        event.held = p.drills.out_of_order;
        p.events.push(event);
        let mut send = if p.drills.out_of_order {
            vec![]
        } else {
            vec![p.events.len() - 1]
        };
        // A trade_finished drill set before the payment: the window ends right after it.
        if p.drills.trade_finished {
            for i in finish(&mut p, &app, now) {
                if !send.contains(&i) {
                    send.push(i);
                }
            }
        }
        self.commit(&mut p, version, &app, &send).await?;
        Ok((p, true))
    }

    /// Closes a waiting trade (the buyer canceled, or it expired): TRADE_CLOSED and the
    /// close notification where the provider sends one. Closing a closed trade is a no-op;
    /// a paid trade is refunded, not closed.
    pub(super) async fn close(&self, id: &str, reason: &str) -> Result<Payment, ApiError> {
        let _guard = self.inner.lock.lock().await;
        let (mut p, version) = self.load(id).await?;
        match p.state {
            TradeState::TradeClosed => return Ok(p),
            TradeState::TradeSuccess | TradeState::TradeFinished => {
                return Err(ApiError::Conflict(
                    "the trade is paid; refund it instead of closing it".into(),
                ))
            }
            TradeState::WaitBuyerPay => {}
        }
        let app = self.app(&p.app_id).await?;
        let now = now_ms();
        p.state = TradeState::TradeClosed;
        p.closed_at = Some(now);
        p.close_reason = Some(reason.to_string());
        let out = wire::closed(&p, &app.credentials);
        let note = out.is_none().then(|| {
            "WeChat Pay sends no notification when a trade closes unpaid; query the trade"
                .to_string()
        });
        p.events
            .push(new_event(&p, &app, EventKind::Closed, now, out, note));
        let send = vec![p.events.len() - 1];
        self.commit(&mut p, version, &app, &send).await?;
        Ok(p)
    }

    /// Refunds part or all of a paid trade. Returns the payment and the refund's index; a
    /// repeated `out_refund_no` with the same amount returns the earlier refund.
    pub(super) async fn refund(
        &self,
        id: &str,
        req: RefundRequest,
    ) -> Result<(Payment, usize, bool), ApiError> {
        let _guard = self.inner.lock.lock().await;
        let (mut p, version) = self.load(id).await?;
        if let Some(no) = &req.out_refund_no {
            if let Some(i) = p.refunds.iter().position(|r| &r.out_refund_no == no) {
                if p.refunds[i].amount == req.amount && p.refunds[i].status == req.status {
                    return Ok((p, i, false));
                }
                return Err(ApiError::Conflict(format!(
                    "refund {no:?} exists with a different amount"
                )));
            }
        }
        match p.state {
            TradeState::WaitBuyerPay => {
                return Err(ApiError::Conflict(
                    "the trade is not paid; there is nothing to refund".into(),
                ))
            }
            TradeState::TradeClosed => {
                return Err(ApiError::Conflict(
                    "the trade is closed (unpaid, or refunded in full)".into(),
                ))
            }
            TradeState::TradeFinished => {
                return Err(ApiError::Conflict(
                    "the trade is finished (TRADE_FINISHED): its refund window is over".into(),
                ))
            }
            TradeState::TradeSuccess => {}
        }
        let remaining = p.amount - p.refunded();
        if req.amount > remaining {
            return Err(ApiError::Invalid(format!(
                "the refund ({}) is more than what is left to refund ({remaining} minor units)",
                req.amount
            )));
        }
        let app = self.app(&p.app_id).await?;
        let now = now_ms();
        let seq = p.refunds.len() as u32 + 1;
        let refund = Refund {
            seq,
            out_refund_no: req
                .out_refund_no
                .unwrap_or_else(|| format!("{}-R{seq}", p.out_trade_no)),
            refund_id: wire::new_refund_id(p.profile, now),
            amount: req.amount,
            refunded_total: if req.status == RefundStatus::Success {
                p.refunded() + req.amount
            } else {
                p.refunded()
            },
            at: now,
            status: req.status,
        };
        if refund.refunded_total >= p.amount {
            p.state = TradeState::TradeClosed;
            p.closed_at = Some(now);
            p.close_reason = Some("refunded".into());
        }
        let out = wire::refunded(&p, &app.credentials, &refund);
        let note = out
            .is_none()
            .then(|| "the provider sends no notification for this refund".to_string());
        p.refunds.push(refund);
        let mut event = new_event(&p, &app, EventKind::Refund, now, out, note);
        event.notify_url = req.notify_url;
        p.events.push(event);
        let mut send = vec![p.events.len() - 1];
        // An out-of-order drill held the payment notification back until now: it goes after
        // the refund's.
        send.extend(release_held(&mut p));
        self.commit(&mut p, version, &app, &send).await?;
        let i = p.refunds.len() - 1;
        Ok((p, i, true))
    }

    /// Replaces the payment's drills; turning `out_of_order` off releases a held payment
    /// notification at once.
    pub(super) async fn set_drills(&self, id: &str, drills: Drills) -> Result<Payment, ApiError> {
        let _guard = self.inner.lock.lock().await;
        let (mut p, version) = self.load(id).await?;
        let app = self.app(&p.app_id).await?;
        if drills.trade_finished && p.state == TradeState::TradeClosed {
            return Err(ApiError::Conflict(
                "the trade is closed; it can no longer finish (trade_finished)".into(),
            ));
        }
        p.drills = drills;
        let mut send = if p.drills.out_of_order {
            vec![]
        } else {
            release_held(&mut p)
        };
        if p.drills.trade_finished && p.state == TradeState::TradeSuccess {
            send.extend(finish(&mut p, &app, now_ms()));
        }
        self.commit(&mut p, version, &app, &send).await?;
        Ok(p)
    }

    /// Writes the payment with the notifications of `events` (indexes into `p.events`) in one
    /// transaction, then records their ids in the document (a second, best-effort write: the
    /// ids are for the view; the notifications are already durable).
    async fn commit(
        &self,
        p: &mut Payment,
        version: i64,
        app: &App,
        events: &[usize],
    ) -> Result<(), ApiError> {
        let d = &p.drills;
        let foreign = if d.bad_signature && !events.is_empty() {
            Some(drills::foreign_app(self.store(), app).await?)
        } else {
            None
        };
        let tamper = if d.tampered_amount && !events.is_empty() {
            Some(drills::tamper_app(self.store(), app).await?)
        } else {
            None
        };
        let mut planned: Vec<(usize, Planned)> = Vec::new();
        for &i in events {
            let e = &p.events[i];
            let (Some(event_type), Some(payload), Some(notify_id)) =
                (&e.event_type, &e.payload, &e.notify_id)
            else {
                continue;
            };
            let payload: Value = serde_json::from_str(payload).map_err(corrupt)?;
            let out = Outgoing {
                event_type: event_type.clone(),
                payload,
            };
            for plan in drills::plan(
                app,
                foreign.as_deref(),
                tamper.as_deref(),
                &p.drills,
                &out,
                e.notify_url.as_deref().unwrap_or(&p.notify_url),
                &format!("trade:{}", p.out_trade_no),
                &format!("sandbox:{}:{}", p.id, e.seq),
                notify_id,
            ) {
                planned.push((i, plan));
            }
        }
        let written = self
            .store()
            .write_sandbox_payment(SandboxWrite {
                payment: p.to_row().map_err(corrupt)?,
                expected_version: Some(version),
                notifications: planned
                    .iter()
                    .map(|(_, pl)| pl.notification.clone())
                    .collect(),
            })
            .await
            .map_err(|e| match e {
                StoreError::Conflict(m) => ApiError::Conflict(m),
                other => other.into(),
            })?;
        if planned.is_empty() {
            return Ok(());
        }
        for ((i, plan), created) in planned.iter().zip(&written.notifications) {
            p.events[*i].notifications.push(Enqueued {
                role: plan.role.to_string(),
                notification_id: created.notification.id.clone(),
                delivery_id: created.deliveries.first().map(|d| d.id.clone()),
            });
        }
        let row = p.to_row().map_err(corrupt)?;
        if let Err(e) = self
            .store()
            .write_sandbox_payment(SandboxWrite {
                payment: row,
                expected_version: Some(written.payment.version),
                notifications: vec![],
            })
            .await
        {
            tracing::warn!(payment = %p.id, error = %e, "recording the notification ids failed");
        }
        Ok(())
    }
}

/// Ends the refund window of a paid trade: `TRADE_FINISHED`, and its notification where the
/// provider sends one. Returns the index of the event to send.
/// A payment notification held by an out-of-order drill goes first (there will be no refund
/// to release it).
fn finish(p: &mut Payment, app: &App, now: UnixMillis) -> Vec<usize> {
    if p.state != TradeState::TradeSuccess {
        return vec![];
    }
    let mut send = release_held(p);
    p.state = TradeState::TradeFinished;
    p.finished_at = Some(now);
    let out = wire::finished(p, &app.credentials);
    let note = out.is_none().then(|| {
        format!(
            "{} sends no notification when a trade's refund window ends; the trade can no longer be refunded",
            p.profile.name()
        )
    });
    let event = new_event(p, app, EventKind::Finished, now, out, note);
    p.events.push(event);
    send.push(p.events.len() - 1);
    send
}

/// Unholds held events, returning their indexes.
fn release_held(p: &mut Payment) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, e) in p.events.iter_mut().enumerate() {
        if e.held {
            e.held = false;
            out.push(i);
        }
    }
    out
}

fn new_event(
    p: &Payment,
    app: &App,
    kind: EventKind,
    now: UnixMillis,
    out: Option<Outgoing>,
    note: Option<String>,
) -> Event {
    let notify_id = out.as_ref().map(|_| notify_id_for(app.profile));
    Event {
        seq: p.next_seq(),
        kind,
        at: now,
        event_type: out.as_ref().map(|o| o.event_type.clone()),
        payload: out.map(|o| o.payload.to_string()),
        notify_id,
        held: false,
        notifications: vec![],
        note,
        notify_url: None,
    }
}

fn notify_id_for(profile: Profile) -> String {
    profile.new_notify_id()
}
