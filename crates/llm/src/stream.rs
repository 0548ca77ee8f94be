//! Partial answers: calls through `baml-cli serve`'s `/stream/{function}` whose partial
//! values reach an observer, rate-limited.
//!
//! What `/stream` sends was found by experiment with baml-cli 0.226.3 (and its source): a
//! `text/event-stream` of `data: <json>` events, one per provider chunk, each BAML's
//! *partial* value of the function's return type (fields not yet written are `null`,
//! lists and strings grow), the last one repeated when the answer is complete. There is no
//! event that marks the final value and none that carries an error: a provider 429/5xx, a
//! refused finish reason or output that does not parse all end the stream the same way —
//! and only after axum's 15 s keep-alive tick, because an unparseable result leaves the
//! event stream pending without a wake-up. Errors in arguments or authentication are
//! ordinary non-200 answers, as on `/call`.
//!
//! So the stream is used for the partial values only. What the provider answered is known
//! from the metering proxy, which sees the request end (no 15 s wait) and keeps the answer
//! in the shape a non-streamed request would have received. The client then asks `/call`
//! again with the provider pointed at a *replay* route of the proxy that serves exactly
//! that answer: BAML judges it as it judges every `/call` answer (parsing, finish reasons,
//! provider errors), no provider request is made, and the error behaviour is the one of
//! `/call` by construction. The replay costs one local round trip and no tokens.

use serde_json::Value;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

/// How often a call sends a partial value at most, unless told otherwise.
pub const DEFAULT_PARTIAL_INTERVAL: Duration = Duration::from_millis(500);

/// Largest event of the sidecar's stream that is looked at; a partial value is never
/// larger than the answer itself, which `max_tokens` bounds far below this.
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// The model's answer so far, as BAML parses an unfinished answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Partial {
    /// The BAML function name, e.g. `PlanFeature`.
    pub function: &'static str,
    /// The try this partial belongs to (as in [`crate::RetryNotice::attempt`]): when it
    /// changes, an earlier try failed and the answer starts over.
    pub attempt: u32,
    /// BAML's partial object: the function's return type with every field nullable;
    /// strings and lists grow as the model writes.
    pub value: Value,
    /// Length of `value` as JSON, in characters: grows with the answer, so a consumer can
    /// show progress or skip small changes without serializing.
    pub chars: usize,
}

/// Sends partial values to an observer at most once per `every`, and only values that
/// differ from the last one sent. Holds two values at most (the last sent and the newest
/// waiting), kept as the JSON text the sidecar sent: comparing text is cheaper than
/// parsing every event, and only a value that is sent is parsed.
pub(crate) struct Throttle {
    tx: UnboundedSender<Partial>,
    function: &'static str,
    every: Duration,
    pub attempt: u32,
    last_at: Option<Instant>,
    last: Option<String>,
    pending: Option<String>,
}

impl Throttle {
    pub fn new(tx: UnboundedSender<Partial>, function: &'static str, every: Duration) -> Self {
        Throttle {
            tx,
            function,
            every,
            attempt: 0,
            last_at: None,
            last: None,
            pending: None,
        }
    }

    /// A new partial value arrived.
    pub fn offer(&mut self, raw: String, now: Instant) {
        if self.last.as_deref() == Some(raw.as_str()) {
            // Back to what the observer already has: nothing to send.
            self.pending = None;
            return;
        }
        match self.last_at {
            Some(at) if now < at + self.every => self.pending = Some(raw),
            _ => self.send(raw, now),
        }
    }

    /// When the waiting value may be sent, if one waits.
    pub fn due(&self) -> Option<Instant> {
        self.pending.as_ref()?;
        Some(self.last_at.map_or_else(Instant::now, |at| at + self.every))
    }

    /// Sends the waiting value (its time has come).
    pub fn flush(&mut self, now: Instant) {
        if let Some(raw) = self.pending.take() {
            self.send(raw, now);
        }
    }

    /// The try is over: a value still waiting is dropped, never sent late — the final
    /// value (or the next try) follows, and sending it now could break the rate.
    pub fn end_attempt(&mut self) {
        self.pending = None;
    }

    fn send(&mut self, raw: String, now: Instant) {
        let Ok(value) = serde_json::from_str::<Value>(&raw) else {
            return;
        };
        // A dropped receiver only means nobody listens any more.
        let _ = self.tx.send(Partial {
            function: self.function,
            attempt: self.attempt,
            value,
            chars: raw.chars().count(),
        });
        self.last = Some(raw);
        self.last_at = Some(now);
    }
}

/// Splits the sidecar's server-sent events into their data, as bytes arrive in pieces.
#[derive(Default)]
pub(crate) struct EventReader {
    line: Vec<u8>,
    data: String,
    /// The current line or event outgrew `MAX_EVENT_BYTES`: skipped to its end.
    skipping: bool,
}

impl EventReader {
    /// The data of every event completed by `bytes`.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut done = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                if self.line.len() < MAX_EVENT_BYTES {
                    self.line.push(b);
                } else {
                    self.skipping = true;
                }
                continue;
            }
            let line = std::mem::take(&mut self.line);
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            if line.is_empty() {
                // A blank line ends the event.
                let data = std::mem::take(&mut self.data);
                if !std::mem::take(&mut self.skipping) && !data.is_empty() {
                    done.push(data);
                }
            } else if let Some(value) = line.strip_prefix(b"data:") {
                let value = value.strip_prefix(b" ").unwrap_or(value);
                if self.data.len() + value.len() > MAX_EVENT_BYTES {
                    self.skipping = true;
                } else if !self.skipping {
                    if !self.data.is_empty() {
                        self.data.push('\n');
                    }
                    self.data.push_str(&String::from_utf8_lossy(value));
                }
            }
            // Comments (`:` keep-alives), `event:`, `id:` and `retry:` carry nothing here.
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_found_however_the_bytes_are_split() {
        let text = "data: {\"a\":1}\n\n: keep-alive\n\ndata: {\"a\":\ndata: 2}\r\n\r\nevent: x\ndata: [3]\n\n";
        for split in [1, 2, 5, 100] {
            let mut reader = EventReader::default();
            let mut got = Vec::new();
            for chunk in text.as_bytes().chunks(split) {
                got.extend(reader.feed(chunk));
            }
            assert_eq!(got, ["{\"a\":1}", "{\"a\":\n2}", "[3]"], "split {split}");
        }
    }

    #[test]
    fn oversized_events_are_skipped_whole() {
        let mut reader = EventReader::default();
        let big = format!("data: {}\n\ndata: 1\n\n", "x".repeat(MAX_EVENT_BYTES + 10));
        assert_eq!(reader.feed(big.as_bytes()), ["1"]);
    }

    fn received(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Partial>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(p) = rx.try_recv() {
            assert_eq!(p.chars, p.value.to_string().chars().count());
            out.push(p.value.to_string());
        }
        out
    }

    #[test]
    fn throttle_sends_changes_at_most_once_per_interval() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut t = Throttle::new(tx, "F", Duration::from_millis(500));
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        t.offer("[1]".into(), at(0));
        assert_eq!(t.due(), None);
        // Within the interval: held back, newest wins.
        t.offer("[2]".into(), at(100));
        t.offer("[3]".into(), at(200));
        assert_eq!(t.due(), Some(at(500)));
        t.flush(at(500));
        assert_eq!(received(&mut rx), ["[1]", "[3]"]);
        // Unchanged values are never sent, even when due.
        t.offer("[3]".into(), at(2000));
        assert_eq!(t.due(), None);
        t.offer("[4]".into(), at(2100));
        assert_eq!(received(&mut rx), ["[4]"]);
        t.offer("[5]".into(), at(2200));
        t.offer("[4]".into(), at(2300));
        assert_eq!(t.due(), None, "back to what was sent: nothing waits");
        // Waiting values die with their try.
        t.offer("[6]".into(), at(2400));
        t.end_attempt();
        assert_eq!(t.due(), None);
        assert_eq!(received(&mut rx), Vec::<String>::new());
        // Unparseable data is not sent.
        t.offer("{not json".into(), at(9000));
        assert_eq!(received(&mut rx), Vec::<String>::new());
    }

    #[test]
    fn a_zero_interval_sends_every_change() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut t = Throttle::new(tx, "F", Duration::ZERO);
        let now = Instant::now();
        for v in ["[1]", "[1]", "[2]", "[3]"] {
            t.offer(v.into(), now);
        }
        assert_eq!(received(&mut rx), ["[1]", "[2]", "[3]"]);
    }
}
