//! The worker's side of a subscription session's stream (docs/protocol.md §8): the
//! first frame was a `subscribe`; this answers it, then runs the session until either
//! side ends it.
//!
//! ```text
//!   recv ─▶ reader task ─▶ frames (update, subscribe) ─┐
//!                                                        ▼
//!   Outbox (service fan-out) ─▶ next() ─▶ session loop ─▶ send: confirmation, notice,
//!                                   heartbeat timer ─┘       ack, refused, heartbeat, closing
//! ```
//!
//! One task per session, one loop with a fixed order (stop, caller frames, outbox,
//! heartbeat). Every write has a deadline ([`STALL_TIMEOUT`]): a caller that stops
//! reading for that long loses the session; until then its [`Outbox`] drops and counts.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use quinn::{RecvStream, SendStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::protocol::frame::{self, FrameError, PROTOCOL_VERSION};
use crate::protocol::subscription::{
    self, Ack, ClientFrame, Notice, RefusalCode, WorkerFrame, MAX_CLIENT_FRAME_BYTES,
    MAX_HEARTBEAT_MS, MAX_WORKER_FRAME_BYTES, MIN_HEARTBEAT_MS,
};
use crate::subscription::{Accepted, Outbox, Outgoing, Refusal, SubscriptionService};

pub(super) use crate::protocol::subscription::opens_session;

/// Largest first frame of a session, bytes ([`MAX_CLIENT_FRAME_BYTES`]).
pub(super) const MAX_FIRST_FRAME_BYTES: usize = MAX_CLIENT_FRAME_BYTES;

/// Heartbeat interval when the caller asks for none (`heartbeat_ms` 0): short enough that
/// a caller that hears nothing for a few intervals moves to another worker within
/// seconds, long enough to cost little (one small frame per session every 2 s).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(2);

/// Longest a write to a session may wait for its caller to read: past it the session
/// is ended (its queue has been dropping messages all along).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Frames a caller may send per second on one session (updates), with twice as many in a
/// burst: wallets add an account now and then, not in loops.
const CLIENT_FRAMES_PER_SECOND: f64 = 10.0;

/// QUIC stream error code a worker resets a session's stream with when it gives up on
/// it (a caller that stopped reading).
const RESET_STALLED: u32 = 2;

/// Serves one session whose first frame body is `first`, until the caller finishes its
/// side, the service closes it, the stream fails or `cancel` fires. Never panics on peer
/// input.
pub(super) async fn serve(
    first: Vec<u8>,
    mut send: SendStream,
    recv: RecvStream,
    peer: SocketAddr,
    keys: &[String],
    service: Option<&dyn SubscriptionService>,
    cancel: CancellationToken,
) {
    let subscribe = match subscription::decode::<ClientFrame>(&first) {
        Ok(ClientFrame::Subscribe(s)) => s,
        Ok(ClientFrame::Update(u)) => {
            let refused = WorkerFrame::refused(
                u.id,
                RefusalCode::MalformedFrame,
                "the first frame of a session must be a subscribe",
            );
            refuse(&mut send, refused).await;
            return;
        }
        Err(e) => {
            refuse(&mut send, refusal_of(0, &e)).await;
            return;
        }
    };
    let id = subscribe.id;
    if !keys.is_empty() && !keys.contains(&subscribe.key) {
        let message = format!("this worker serves {keys:?}, not {:?}", subscribe.key);
        refuse(
            &mut send,
            WorkerFrame::refused(id, RefusalCode::UnknownService, message),
        )
        .await;
        return;
    }
    let Some(service) = service else {
        let message = "this worker serves no subscriptions (it runs without --nano-ws)";
        refuse(
            &mut send,
            WorkerFrame::refused(id, RefusalCode::UnknownService, message),
        )
        .await;
        return;
    };
    let session = match service.open(&subscribe, peer) {
        Ok(session) => session,
        Err(refusal) => {
            debug!(%peer, code = %refusal.code, "subscription refused");
            refuse(
                &mut send,
                WorkerFrame::refused(id, refusal.code, refusal.message),
            )
            .await;
            return;
        }
    };
    let heartbeat = match subscribe.heartbeat_ms {
        0 => DEFAULT_HEARTBEAT,
        ms => Duration::from_millis(u64::from(ms.clamp(MIN_HEARTBEAT_MS, MAX_HEARTBEAT_MS))),
    };
    let heartbeat_ms = u32::try_from(heartbeat.as_millis()).unwrap_or(MAX_HEARTBEAT_MS);
    if write(&mut send, &ack(id, session.accepted, heartbeat_ms))
        .await
        .is_err()
    {
        return;
    }
    debug!(%peer, accounts = session.accepted.accounts, "subscription open");
    let (frames_tx, mut frames) = mpsc::channel(4);
    let reader = tokio::spawn(read_frames(recv, frames_tx));
    let mut last_sent = Instant::now();
    let mut budget = Budget::new(CLIENT_FRAMES_PER_SECOND);
    let outbox: &Outbox = &session.outbox;
    loop {
        let wake = tokio::time::Instant::from_std(last_sent + heartbeat);
        let out = tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                WorkerFrame::closing(RefusalCode::ShuttingDown, "the worker is shutting down")
            }
            frame = frames.recv() => match frame {
                // The caller finished its side (unsubscribe), or the stream failed.
                None => break,
                Some(Err(e)) => {
                    let close = matches!(e, FrameError::TooLarge { .. });
                    let refused = refusal_of(0, &e);
                    if close {
                        refuse(&mut send, refused).await;
                        break;
                    }
                    refused
                }
                Some(Ok(frame)) => {
                    let frame = *frame;
                    let id = frame.id();
                    if !budget.take(Instant::now()) {
                        WorkerFrame::refused(id, RefusalCode::RateLimited, format!(
                            "more than {CLIENT_FRAMES_PER_SECOND} updates a second; this one was not applied"
                        ))
                    } else {
                        let applied = match &frame {
                            ClientFrame::Update(update) => session.control.update(update),
                            ClientFrame::Subscribe(subscribe) => session.control.replace(subscribe),
                        };
                        match applied {
                            Ok(accepted) => ack(id, accepted, heartbeat_ms),
                            Err(Refusal { code, message }) => WorkerFrame::refused(id, code, message),
                        }
                    }
                }
            },
            next = outbox.next() => match next {
                Outgoing::Frame(bytes) => {
                    if write_bytes(&mut send, &bytes).await.is_err() {
                        break;
                    }
                    last_sent = Instant::now();
                    continue;
                }
                Outgoing::Lost { lost, total, reason } => WorkerFrame::Notice(Notice {
                    v: PROTOCOL_VERSION,
                    lost,
                    total_lost: total,
                    reason: reason.as_str().to_string(),
                    message: format!(
                        "{lost} confirmation(s) dropped ({}); {total} in this session",
                        match reason {
                            crate::subscription::DropReason::SlowReader => "the session read too slowly",
                            crate::subscription::DropReason::RateLimit => "over the worker's messages per second",
                        }
                    ),
                }),
                Outgoing::Closed(refusal) => WorkerFrame::closing(refusal.code, refusal.message),
            },
            _ = tokio::time::sleep_until(wake) => WorkerFrame::heartbeat(),
        };
        let closing = matches!(out, WorkerFrame::Closing(_));
        if write(&mut send, &out).await.is_err() {
            break;
        }
        last_sent = Instant::now();
        if closing {
            let _ = send.finish();
            break;
        }
    }
    reader.abort();
    let _ = send.finish();
    debug!(%peer, lost = outbox.total_lost(), "subscription ended");
}

fn ack(id: u64, accepted: Accepted, heartbeat_ms: u32) -> WorkerFrame {
    WorkerFrame::Ack(Ack {
        v: PROTOCOL_VERSION,
        id,
        accounts: accepted.accounts,
        max_accounts: accepted.max_accounts,
        max_rate: accepted.max_rate,
        heartbeat_ms,
    })
}

fn refusal_of(id: u64, e: &FrameError) -> WorkerFrame {
    let code = match e {
        FrameError::UnsupportedVersion(_) => RefusalCode::UnsupportedVersion,
        _ => RefusalCode::MalformedFrame,
    };
    WorkerFrame::refused(id, code, e.to_string())
}

/// Writes a refusal and finishes the stream.
async fn refuse(send: &mut SendStream, refused: WorkerFrame) {
    let _ = write(send, &refused).await;
    let _ = send.finish();
}

async fn write(send: &mut SendStream, frame: &WorkerFrame) -> Result<(), ()> {
    match subscription::encode(frame, MAX_WORKER_FRAME_BYTES) {
        Ok(bytes) => write_bytes(send, &bytes).await,
        Err(e) => {
            debug!(%e, "session frame not encoded");
            Ok(())
        }
    }
}

async fn write_bytes(send: &mut SendStream, bytes: &[u8]) -> Result<(), ()> {
    match tokio::time::timeout(STALL_TIMEOUT, send.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            debug!(%e, "subscriber went away");
            Err(())
        }
        Err(_) => {
            debug!("subscriber stopped reading; session ended");
            let _ = send.reset(RESET_STALLED.into());
            Err(())
        }
    }
}

/// Reads the caller's frames until it finishes its side (the channel closes) or a frame
/// is too large to read (the last item).
async fn read_frames(
    mut recv: RecvStream,
    frames: mpsc::Sender<Result<Box<ClientFrame>, FrameError>>,
) {
    loop {
        let mut prefix = [0u8; frame::LENGTH_PREFIX_LEN];
        match recv.read_exact(&mut prefix).await {
            Ok(()) => {}
            Err(_) => return,
        }
        let len = match frame::body_len(prefix, MAX_CLIENT_FRAME_BYTES) {
            Ok(len) => len,
            Err(e) => {
                let _ = frames.send(Err(e)).await;
                return;
            }
        };
        let mut body = vec![0u8; len];
        if recv.read_exact(&mut body).await.is_err() {
            return;
        }
        // Boxed: the channel's slots are allocated in blocks, and a session keeps its
        // channel for as long as it lasts.
        let frame = subscription::decode::<ClientFrame>(&body).map(Box::new);
        if frames.send(frame).await.is_err() {
            return;
        }
    }
}

/// A token bucket: `rate` per second, `2 × rate` at once.
struct Budget {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Budget {
    fn new(rate: f64) -> Self {
        Self {
            rate,
            tokens: rate * 2.0,
            at: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate * 2.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
