//! Taking a lock whose previous holder panicked.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex` even when a thread panicked while holding it. A panic is not a reason
/// for the threads that must still finish the run (flush, report, exit with the right
/// status) to panic too; where a holder could leave the guarded data half-changed, the
/// data's own comment says why it stays usable.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
