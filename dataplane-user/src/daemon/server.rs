//! The control socket's server: a task per connection, at most [`MAX_CLIENTS`] at once, each
//! with a deadline for its request and a bound on its size, forwarding the request to the
//! owner as a [`Command`].

use std::{sync::Arc, time::Duration};

use futures::{SinkExt as _, StreamExt as _};
use tokio::{
    net::{UnixListener, UnixStream},
    sync::{Semaphore, mpsc, oneshot},
};
use tokio_util::codec::Framed;

use super::{Command, MAX_CLIENTS, REQUEST_TIMEOUT};
use crate::control::{self, Reason, Reply, Request};

/// Accepts control connections, each served by a task of its own; beyond [`MAX_CLIENTS`] at
/// once, a connection gets an error reply and is closed.
pub(super) async fn accept_loop(listener: UnixListener, tx: mpsc::Sender<Command>) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                log::warn!("control socket: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let tx = tx.clone();
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(async move {
                    connection(stream, tx).await;
                    drop(permit);
                });
            }
            Err(_) => {
                tokio::spawn(async move {
                    let mut f = Framed::new(stream, control::codec());
                    let busy = Reply::error(format!(
                        "too many control clients ({MAX_CLIENTS}); try again"
                    ));
                    let _ = tokio::time::timeout(
                        REQUEST_TIMEOUT,
                        f.send(serde_json::to_string(&busy).unwrap_or_default()),
                    )
                    .await;
                });
            }
        }
    }
}

/// One control connection: a request within [`REQUEST_TIMEOUT`], its reply; a monitor's
/// connection then stays open until the client goes.
pub(super) async fn connection(stream: UnixStream, tx: mpsc::Sender<Command>) {
    let root = stream.peer_cred().map(|c| c.uid() == 0).unwrap_or(false);
    let mut f = Framed::new(stream, control::codec());
    let reply = |r: Reply| serde_json::to_string(&r).unwrap_or_default();
    if !root {
        let _ = f
            .send(reply(Reply::error("only root may change the node")))
            .await;
        return;
    }
    let req = match tokio::time::timeout(REQUEST_TIMEOUT, f.next()).await {
        Err(_) => {
            let _ = f
                .send(reply(Reply::error(format!(
                    "no request within {}s",
                    REQUEST_TIMEOUT.as_secs()
                ))))
                .await;
            return;
        }
        Ok(None) => return,
        Ok(Some(frame)) => control::decode(frame),
    };
    match req {
        Err(e) => {
            let _ = f.send(reply(Reply::error(e))).await;
        }
        Ok(Request::Monitor { drops_only }) => {
            let (itx, irx) = oneshot::channel();
            if tx
                .send(Command::MonitorStart {
                    drops_only,
                    id: itx,
                })
                .await
                .is_err()
            {
                return;
            }
            let Ok(id) = irx.await else { return };
            if f.send(reply(Reply::ok())).await.is_ok() {
                // The client sends nothing more: anything from it, or its end, closes it.
                let _ = f.next().await;
            }
            let _ = tx.send(Command::MonitorEnd(id)).await;
        }
        Ok(req) => {
            let (rtx, rrx) = oneshot::channel();
            let r = match tx.send(Command::Request(req, rtx)).await {
                Ok(()) => rrx
                    .await
                    .unwrap_or_else(|_| Reply::refused(Reason::NotReady, "the daemon is stopping")),
                Err(_) => Reply::refused(Reason::NotReady, "the daemon is stopping"),
            };
            let _ = f.send(reply(r)).await;
        }
    }
}
