//! What the fuzz targets share: a worker thread with a small stack, and the
//! invariants every decoded message must keep.

use std::fmt::Debug;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Mutex, OnceLock};

use opsync::http::body::{self, Format};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The stack the decoders run on: a quarter of an actix worker thread's (2 MiB,
/// Rust's default), so nesting that would come near to overflowing a worker is
/// caught here as a crash, with room to spare under the sanitizers.
pub const STACK: usize = 512 * 1024;

type Job = Box<dyn FnOnce() + Send>;

struct Worker {
    jobs: SyncSender<Job>,
    done: Receiver<()>,
}

/// Runs `f` on a persistent thread with a [`STACK`]-byte stack, and waits for it.
/// A panic there aborts the process (libFuzzer's panic hook), which libFuzzer
/// reports as a crash like any other.
pub fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    static WORKER: OnceLock<Mutex<Worker>> = OnceLock::new();
    let worker = WORKER.get_or_init(|| {
        let (jobs, inbox) = sync_channel::<Job>(0);
        let (finished, done) = sync_channel::<()>(0);
        std::thread::Builder::new()
            .name("decoder".into())
            .stack_size(STACK)
            .spawn(move || {
                for job in inbox {
                    job();
                    if finished.send(()).is_err() {
                        return;
                    }
                }
            })
            .unwrap_or_else(|e| panic!("cannot start the decoder thread: {e}"));
        Mutex::new(Worker { jobs, done })
    });
    let worker = worker.lock().unwrap_or_else(|p| p.into_inner());
    worker.jobs.send(Box::new(f)).unwrap_or_else(|_| panic!("the decoder thread is gone"));
    worker.done.recv().unwrap_or_else(|_| panic!("the decoder thread is gone"));
}

/// A decoded message is the same message in both formats: it encodes in each and
/// decodes back to itself (unknown keys are dropped on the way, nothing else).
pub fn assert_round_trips<T>(value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    for format in [Format::Json, Format::Msgpack] {
        let bytes =
            body::encode(format, value).unwrap_or_else(|e| panic!("{value:?} does not encode as {format:?}: {e}"));
        let again: T =
            body::decode(format, &bytes).unwrap_or_else(|e| panic!("{value:?} does not decode from {format:?}: {e}"));
        assert_eq!(&again, value, "{format:?} round trip");
    }
}

/// Nests `inner` `depth` levels deep in arrays, in `format`: the shape a client
/// would send to exhaust a decoder's stack.
pub fn nest(format: Format, depth: usize, inner: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(depth * 2 + inner.len());
    match format {
        Format::Json => {
            out.extend(std::iter::repeat_n(b'[', depth));
            out.extend_from_slice(inner);
            out.extend(std::iter::repeat_n(b']', depth));
        }
        Format::Msgpack => {
            // fixarray of one element, `depth` times.
            out.extend(std::iter::repeat_n(0x91, depth));
            out.extend_from_slice(inner);
        }
    }
    out
}

/// A JSON text re-encoded as MessagePack (maps keyed by name, as clients send),
/// or `None` if it is not JSON. Lets byte-level mutations, which keep JSON valid
/// far more often than MessagePack's length-prefixed values, reach the code that
/// runs after decoding.
pub fn json_as_msgpack(json: &[u8]) -> Option<Vec<u8>> {
    let value: serde_json::Value = serde_json::from_slice(json).ok()?;
    rmp_serde::to_vec_named(&value).ok()
}
