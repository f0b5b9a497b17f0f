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
/// swap means another writer's swap succeeded, so `n` writers of one row at once need at
/// most `n` attempts.
pub const UPDATE_ATTEMPTS: usize = 64;

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
    for _ in 0..UPDATE_ATTEMPTS {
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
