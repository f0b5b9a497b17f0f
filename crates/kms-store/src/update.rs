//! Read-modify-write of one row by compare-and-swap: read the row, decide from what was read,
//! swap only if the row still holds those bytes, else read again and decide again. The one
//! retry loop of every writer that must not lose a concurrent update (the BSF's SQN
//! allocation, the voicemail server's id counter and message updates).
//!
//! Correctness rests on [`Store::compare_and_swap`] being atomic across every writer of the
//! store, replicas sharing one PostgreSQL included: of writers that read the same bytes,
//! exactly one swap succeeds. A writer whose new value could equal a value the row held
//! before must make its values distinct (the BSF counts writes in the row) or accept that a
//! swap succeeds against an equal, later value (ABA).

use zeroize::Zeroizing;

use crate::{Store, StoreError, Table};

/// Attempts of one [`update`] before it gives up with [`StoreError::Contention`]. Each lost
/// swap means another writer's swap succeeded, so an update fails only after 64 writes of
/// the same row by others landed while it tried — writers that keep writing the row (a burst
/// of SQN allocations for one subscriber) can do that to a slow one without the
/// [`backoff`] after each loss, which lets the winners finish first.
pub const UPDATE_ATTEMPTS: usize = 64;

/// Pause after the `lost`-th lost swap (0-based): uniformly random in 0 to
/// `min(2^lost, 32)` × 100 µs (at most 3.2 ms; under 0.2 s over every attempt), so writers
/// that collided spread out instead of colliding again in step. The jitter needs no
/// cryptographic randomness: it comes from std's randomly keyed `RandomState` hasher.
fn backoff(lost: usize) -> std::time::Duration {
    use std::hash::{BuildHasher, Hasher};
    let slots = 1u64 << lost.min(5);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(lost);
    std::time::Duration::from_micros(h.finish() % (slots * 100 + 1))
}

/// What the function given to [`update`] decides for the row it was shown.
#[derive(Debug)]
pub enum Step<T> {
    /// Replace the row by this value (`None`: delete it) if it still holds exactly what was
    /// read, and return the `T`; if another writer changed it meanwhile, the row is read
    /// again and the function asked again.
    Write(Option<Zeroizing<Vec<u8>>>, T),
    /// Change nothing and return the `T` (e.g. the row is absent and must stay so).
    Keep(T),
}

/// Reads row `key` of `table`, asks `f` what to do with it (`None`: the row is absent), and
/// applies [`Step::Write`] by compare-and-swap against the bytes read, retrying on a lost
/// swap at most [`UPDATE_ATTEMPTS`] times. `f` may be called several times; its error is
/// returned at once. The bytes read are wiped after use (rows may hold secrets).
pub async fn update<T, E: From<StoreError>>(
    store: &dyn Store,
    table: Table,
    key: &str,
    mut f: impl FnMut(Option<&[u8]>) -> Result<Step<T>, E>,
) -> Result<T, E> {
    for lost in 0..UPDATE_ATTEMPTS {
        if lost > 0 {
            tokio::time::sleep(backoff(lost - 1)).await;
        }
        let held = store.get(table, key).await?.map(Zeroizing::new);
        let held = held.as_ref().map(|v| v.as_slice());
        match f(held)? {
            Step::Keep(t) => return Ok(t),
            Step::Write(new, t) => {
                if store.compare_and_swap(table, key, held, new.as_ref().map(|v| v.as_slice())).await? {
                    return Ok(t);
                }
            }
        }
    }
    Err(StoreError::Contention { table: table.name(), key: key.to_owned(), attempts: UPDATE_ATTEMPTS }.into())
}
