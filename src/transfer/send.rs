//! The sending side: one task per handoff pair batches the connections the server offers,
//! sends them, and tells each offer what became of it once the new generation answered.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::future::Future;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::{Instant, sleep_until, timeout};

use crate::channel::Channel;
use crate::config::deadline_after;
use crate::handoff::Stream;
use crate::listener::Connection;
use crate::process::process;
use crate::protocol::{MAX_BATCH, MAX_FRAME, Message, Moved};

/// Most bytes read and not consumed that a connection may carry along. At an idle point that
/// is the start of the client's next request, or a few pipelined ones; more than this stays
/// with the old generation, which answers it and closes.
const MAX_UNREAD: usize = 16 * 1024;

/// Bytes a connection's socket takes in a frame: none on Unix (its descriptor rides beside
/// it), at most this much of `WSAPROTOCOL_INFOW` (628 bytes) on Windows.
const SOCKET_INFO: usize = if cfg!(windows) { 640 } else { 0 };

/// Batches sent and not answered yet: enough that a thousand connections moving at one
/// takeover are all in flight at once (the first batches are often small, as connections
/// reach their idle points one by one), few enough that the answers (a few bytes each) can
/// never fill the socket's buffer and stall the new generation.
const IN_FLIGHT: usize = 32;

/// How long the new generation may take to answer a batch (it only has to queue the
/// connections) or to read one. Past it, it is taken to be dead or hung: what it was sent
/// is lost with it, nothing more is sent.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// What became of a connection offered to the successor.
pub(crate) enum Outcome {
    /// The new generation took it; this one's descriptor is closed.
    Moved,
    /// Not moved (refused, nobody to take it, or too much to carry along): serve it on, with
    /// these bytes first.
    Kept(Connection, Vec<u8>),
    /// Sent, but no answer came: the new generation may serve it or may have died with it,
    /// so this one must not touch it again; its descriptor is closed.
    Lost,
}

struct Offer {
    connection: Connection,
    unread: Vec<u8>,
    reply: oneshot::Sender<Outcome>,
}

impl Offer {
    fn keep(self) {
        let _ = self.reply.send(Outcome::Kept(self.connection, self.unread));
    }

    /// Room the offer takes in a `Connections` frame: two lengths, the socket's protocol info
    /// on Windows, and the bytes.
    fn size(&self) -> usize {
        4 + SOCKET_INFO + self.unread.len()
    }
}

/// Where this generation's idle connections go: the generation that took over from it.
#[derive(Clone)]
pub(crate) struct Outbox {
    offers: mpsc::UnboundedSender<Offer>,
    id: u64,
}

/// The current successor's outbox; each takeover replaces it.
static SUCCESSOR: Mutex<Option<Outbox>> = Mutex::new(None);

/// Woken when a successor is introduced: connections waiting at an idle point move then.
static INTRODUCED: Notify = Notify::const_new();

/// Resolves when a (new) successor is introduced. Create it before looking at
/// [`successor`], so that an introduction in between is not missed.
pub(crate) fn introduced() -> tokio::sync::futures::Notified<'static> {
    INTRODUCED.notified()
}

/// The generation to hand idle connections to, if one was introduced, its pair still works
/// and this generation moves connections at all.
pub(crate) fn successor() -> Option<Outbox> {
    if !process().handoff_enabled() {
        return None;
    }
    SUCCESSOR
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .filter(|outbox| !outbox.offers.is_closed())
}

/// From now on, idle connections go over `pair` (the end that came with `HandoffTo`, once
/// usable) to the generation `pid`. Offers made meanwhile wait for it.
pub(crate) fn hand_to(
    pair: impl Future<Output = std::io::Result<Stream>> + Send + 'static,
    pid: u32,
) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let (offers, queue) = mpsc::unbounded_channel();
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    *SUCCESSOR.lock().unwrap_or_else(|e| e.into_inner()) = Some(Outbox { offers, id });
    tokio::spawn(async move {
        match pair.await {
            Ok(pair) => run(Channel::new(pair, false), queue, pid).await,
            Err(e) => {
                tracing::warn!(
                    "connection handoff to pid {pid} unavailable, connections close instead: {e}"
                );
                refuse_all(queue);
            }
        }
    });
    INTRODUCED.notify_waiters();
}

/// Nothing more can be sent: what is queued, and whatever is offered from now on, is kept.
fn refuse_all(mut queue: mpsc::UnboundedReceiver<Offer>) {
    queue.close();
    while let Ok(offer) = queue.try_recv() {
        offer.keep();
    }
}

impl Outbox {
    /// Tells this successor from the ones introduced before or after it.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Offers `connection` to the successor, with the bytes read from it that no request
    /// consumed; resolves once the successor answered (or could not).
    pub(crate) async fn offer(&self, connection: Connection, unread: Vec<u8>) -> Outcome {
        if unread.len() > MAX_UNREAD {
            return Outcome::Kept(connection, unread);
        }
        let (reply, answer) = oneshot::channel();
        let offer = Offer {
            connection,
            unread,
            reply,
        };
        if let Err(mpsc::error::SendError(offer)) = self.offers.send(offer) {
            return Outcome::Kept(offer.connection, offer.unread);
        }
        // The task only drops an offer unanswered if it was sent and then lost.
        answer.await.unwrap_or(Outcome::Lost)
    }
}

/// Sends offers in batches and settles them by the answers, until the pair breaks or nothing
/// more can be offered.
async fn run(mut channel: Channel, mut queue: mpsc::UnboundedReceiver<Offer>, pid: u32) {
    let generation = process().generation();
    let mut waiting: VecDeque<(Vec<Offer>, Instant)> = VecDeque::new();
    let mut carry: Option<Offer> = None;
    let mut open = true;
    let (mut moved, mut refused) = (0u64, 0u64);
    let broken = loop {
        let deadline = waiting.front().map(|(_, deadline)| *deadline);
        tokio::select! {
            offer = next(&mut carry, &mut queue), if open && waiting.len() < IN_FLIGHT => {
                let Some(first) = offer else {
                    open = false;
                    if waiting.is_empty() {
                        break None;
                    }
                    continue;
                };
                let batch = fill(first, &mut queue, &mut carry);
                let batch = match send(&mut channel, batch, pid).await {
                    Ok(sent) => sent,
                    Err((batch, why)) => {
                        // The new generation takes only whole frames, so it took none of these.
                        batch.into_iter().for_each(Offer::keep);
                        break Some(why);
                    }
                };
                if !batch.is_empty() {
                    waiting.push_back((batch, deadline_after(Instant::now(), ANSWER_TIMEOUT)));
                }
            }
            answer = channel.recv(), if !waiting.is_empty() => match answer {
                Ok(Some(Message::Received { taken }))
                    if waiting.front().is_some_and(|(batch, _)| batch.len() == taken.len()) =>
                {
                    let Some((batch, _)) = waiting.pop_front() else { continue };
                    for (offer, taken) in batch.into_iter().zip(taken) {
                        if taken {
                            moved += 1;
                            // Our descriptor only: the connection lives on in the new generation.
                            drop(offer.connection);
                            let _ = offer.reply.send(Outcome::Moved);
                        } else {
                            refused += 1;
                            offer.keep();
                        }
                    }
                    if !open && waiting.is_empty() {
                        break None;
                    }
                }
                Ok(Some(other)) => break Some(format!("it answered {other:?}")),
                Ok(None) => break Some("it closed the handoff channel".to_owned()),
                Err(e) => break Some(e.to_string()),
            },
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                break Some(format!("it did not answer within {ANSWER_TIMEOUT:?}"));
            }
        }
    };
    let mut lost = 0u64;
    for (batch, _) in waiting {
        for offer in batch {
            lost += 1;
            // Dropped unanswered: the offer resolves as lost, and the connection (our
            // descriptor of it) is closed without a shutdown.
            drop(offer);
        }
    }
    if let Some(offer) = carry.take() {
        offer.keep();
    }
    refuse_all(queue);
    match broken {
        Some(why) if lost > 0 => tracing::warn!(
            generation,
            moved,
            refused,
            lost,
            "generation {generation} lost {lost} idle connections in the handoff to its successor ({why}); moved {moved}"
        ),
        Some(why) => tracing::debug!(
            generation,
            moved,
            refused,
            "connection handoff from generation {generation} ended: {why}"
        ),
        None => {}
    }
    if moved + refused > 0 {
        tracing::info!(
            generation,
            moved,
            refused,
            "generation {generation} moved {moved} connections to its successor ({refused} refused)"
        );
    }
}

/// Sends `batch` in one frame: on Unix with the descriptors riding on it; on Windows with each
/// socket duplicated for the new generation `pid` (an offer whose socket cannot be is kept
/// here). Returns what was sent, or the batch back with why nothing was.
#[cfg(unix)]
async fn send(
    channel: &mut Channel,
    batch: Vec<Offer>,
    _pid: u32,
) -> Result<Vec<Offer>, (Vec<Offer>, String)> {
    let message = Message::Connections {
        moved: batch
            .iter()
            .map(|offer| Moved {
                socket: Vec::new(),
                unread: offer.unread.clone(),
            })
            .collect(),
    };
    let fds: Vec<_> = batch
        .iter()
        .map(|offer| offer.connection.socket())
        .collect();
    let sent = timeout(ANSWER_TIMEOUT, channel.send_with_fds(&message, &fds)).await;
    drop(fds);
    match sent {
        Ok(Ok(())) => Ok(batch),
        Ok(Err(e)) => Err((batch, format!("cannot send: {e}"))),
        Err(_) => Err((batch, format!("it read nothing for {ANSWER_TIMEOUT:?}"))),
    }
}

#[cfg(windows)]
async fn send(
    channel: &mut Channel,
    batch: Vec<Offer>,
    pid: u32,
) -> Result<Vec<Offer>, (Vec<Offer>, String)> {
    let mut sendable = Vec::with_capacity(batch.len());
    let mut moved = Vec::with_capacity(batch.len());
    for offer in batch {
        match offer.connection.duplicate_for(pid) {
            Ok(socket) => {
                moved.push(Moved {
                    socket,
                    unread: offer.unread.clone(),
                });
                sendable.push(offer);
            }
            Err(e) => {
                tracing::debug!("a connection stays: {e}");
                offer.keep();
            }
        }
    }
    if sendable.is_empty() {
        return Ok(sendable);
    }
    let sent = timeout(
        ANSWER_TIMEOUT,
        channel.send(&Message::Connections { moved }),
    )
    .await;
    match sent {
        Ok(Ok(())) => Ok(sendable),
        Ok(Err(e)) => Err((sendable, format!("cannot send: {e}"))),
        Err(_) => Err((sendable, format!("it read nothing for {ANSWER_TIMEOUT:?}"))),
    }
}

/// The offer held over from the last batch, else the next one queued.
async fn next(
    carry: &mut Option<Offer>,
    queue: &mut mpsc::UnboundedReceiver<Offer>,
) -> Option<Offer> {
    match carry.take() {
        Some(offer) => Some(offer),
        None => queue.recv().await,
    }
}

/// A batch starting with `first` and taking whatever else is queued now, as long as it fits
/// one frame; the first offer that does not fit waits in `carry` for the next batch.
fn fill(
    first: Offer,
    queue: &mut mpsc::UnboundedReceiver<Offer>,
    carry: &mut Option<Offer>,
) -> Vec<Offer> {
    // The frame's header and count, then each offer.
    let budget = MAX_FRAME - 4;
    let mut size = first.size();
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        let Ok(offer) = queue.try_recv() else { break };
        if size + offer.size() > budget {
            *carry = Some(offer);
            break;
        }
        size += offer.size();
        batch.push(offer);
    }
    batch
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::addr::{Addr, UnixPeer};
    use crate::socket::Stream;

    fn offer(unread: usize) -> Offer {
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let stream = Stream::Unix(tokio::net::UnixStream::from_std(ours).unwrap());
        let connection = Connection::adopted(stream, Addr::Unix(UnixPeer::default()), Vec::new());
        let (reply, _answer) = oneshot::channel();
        Offer {
            connection,
            unread: vec![b'x'; unread],
            reply,
        }
    }

    fn encoded_len(batch: &[Offer]) -> usize {
        let message = Message::Connections {
            moved: batch
                .iter()
                .map(|o| Moved {
                    socket: Vec::new(),
                    unread: o.unread.clone(),
                })
                .collect(),
        };
        let mut frame = Vec::new();
        crate::protocol::encode(&message, &mut frame).expect("a batch always fits one frame");
        frame.len()
    }

    #[tokio::test]
    async fn a_batch_fills_one_frame_and_the_next_offer_waits_for_the_next() {
        let (offers, mut queue) = mpsc::unbounded_channel();
        for size in [10, MAX_UNREAD, MAX_UNREAD, MAX_UNREAD, MAX_UNREAD, 5] {
            assert!(offers.send(offer(size)).is_ok());
        }
        let mut carry = None;
        let first = queue.recv().await.unwrap();
        let batch = fill(first, &mut queue, &mut carry);
        assert_eq!(batch.len(), 4, "the fifth would overflow the frame");
        assert!(encoded_len(&batch) <= 4 + MAX_FRAME);
        assert_eq!(carry.as_ref().map(|o| o.unread.len()), Some(MAX_UNREAD));
        let next = next(&mut carry, &mut queue).await.unwrap();
        let batch = fill(next, &mut queue, &mut carry);
        assert_eq!(batch.len(), 2);
        assert!(carry.is_none());
    }

    #[tokio::test]
    async fn a_batch_carries_at_most_max_batch_connections() {
        let (offers, mut queue) = mpsc::unbounded_channel();
        for _ in 0..MAX_BATCH + 10 {
            assert!(offers.send(offer(0)).is_ok());
        }
        let mut carry = None;
        let first = queue.recv().await.unwrap();
        assert_eq!(fill(first, &mut queue, &mut carry).len(), MAX_BATCH);
        assert!(carry.is_none());
        let first = queue.recv().await.unwrap();
        assert_eq!(fill(first, &mut queue, &mut carry).len(), 10);
    }

    #[tokio::test]
    async fn too_much_unread_stays_and_a_closed_outbox_keeps_everything() {
        let (offers, queue) = mpsc::unbounded_channel();
        let outbox = Outbox { offers, id: 1 };
        let big = offer(MAX_UNREAD + 1);
        assert!(matches!(
            outbox.offer(big.connection, big.unread).await,
            Outcome::Kept(_, unread) if unread.len() == MAX_UNREAD + 1
        ));
        drop(queue);
        let small = offer(3);
        assert!(matches!(
            outbox.offer(small.connection, small.unread).await,
            Outcome::Kept(_, unread) if unread.len() == 3
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn answers_settle_each_offer_and_silence_loses_what_was_sent() {
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let (offers, queue) = mpsc::unbounded_channel();
        let outbox = Outbox { offers, id: 2 };
        tokio::spawn(run(Channel::new(ours, false), queue, 0));
        let mut new_generation = Channel::new(theirs, true);

        // Taken, and refused: each offer hears its own answer.
        for (unread, take) in [(b"GET".to_vec(), true), (Vec::new(), false)] {
            let sent = offer(0);
            let outbox = outbox.clone();
            let expected = unread.clone();
            let outcome = tokio::spawn(async move { outbox.offer(sent.connection, unread).await });
            let Ok(Some(Message::Connections { moved })) = new_generation.recv().await else {
                panic!("expected a batch");
            };
            assert_eq!(moved.len(), 1);
            assert_eq!(moved[0].unread, expected);
            assert_eq!(new_generation.take_fds(1).unwrap().len(), 1);
            new_generation
                .send(&Message::Received { taken: vec![take] })
                .await
                .unwrap();
            match outcome.await.unwrap() {
                Outcome::Moved => assert!(take),
                Outcome::Kept(_, bytes) => assert!(!take && bytes == expected),
                Outcome::Lost => panic!("answered, not lost"),
            }
        }

        // Sent and never answered: lost (never touched again), and nothing more is sent.
        let sent = offer(0);
        let waiting = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.offer(sent.connection, sent.unread).await })
        };
        assert!(matches!(
            new_generation.recv().await,
            Ok(Some(Message::Connections { .. }))
        ));
        assert!(matches!(waiting.await.unwrap(), Outcome::Lost));
        let late = offer(1);
        assert!(matches!(
            outbox.offer(late.connection, late.unread).await,
            Outcome::Kept(..)
        ));
    }
}
