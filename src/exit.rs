//! Exit codes: the one place they are defined. `--help` prints [`TABLE`]; the tables in the
//! README and docs/design.md are written by hand and checked against it by `tests/docs.rs`.

/// Done: acquired, released, renewed, status shown.
pub const OK: u8 = 0;
/// An error nobody planned for; the message carries the whole source chain.
pub const UNEXPECTED: u8 = 1;
/// Bad flags, names, durations or environment values.
pub const USAGE: u8 = 2;
/// The store could not be reached, or throttled us past our retries.
pub const UNAVAILABLE: u8 = 69;
/// `release --strict`: the lock is held by someone else.
pub const HELD_BY_OTHER: u8 = 72;
/// `--no-wait` and the lock is held; or `run` found its own pipeline holding the lock.
pub const HELD: u8 = 73;
/// A newer pipeline of the same project waits for or holds the lock.
pub const SUPERSEDED: u8 = 74;
/// Gave up waiting (`--wait`, `--max-retries`).
pub const TIMED_OUT: u8 = 75;
/// The lease was lost while we held it (`run`, `renew`), or `release` found that the grant
/// had been taken over from us.
pub const LEASE_LOST: u8 = 76;
/// The store refused our credentials the permission for an action.
pub const ACCESS_DENIED: u8 = 77;
/// Configuration: no table/bucket, wrong key schema, bad record, no credentials or region.
pub const CONFIG: u8 = 78;
/// `state put`/`state delete`: refused, a newer fence or another version is stored.
pub const STATE_REFUSED: u8 = 79;
/// `run --max-duration`: the command ran too long and was stopped (TERM, grace, KILL); the
/// lock was released. The next code of the tool's own block (69 to 79), not timeout(1)'s 124,
/// so every code the tool chooses stays in one range a job can tell from its command's.
pub const MAX_DURATION: u8 = 80;

/// Every code with its meaning, for `--help`; `tests/docs.rs` holds the README's table to it.
pub const TABLE: &[(u8, &str)] = &[
    (OK, "done (acquired, released, status shown)"),
    (UNEXPECTED, "unexpected error"),
    (USAGE, "usage error (flags, names a store cannot hold, a lease run cannot keep)"),
    (UNAVAILABLE, "store unreachable or throttled past retries"),
    (HELD_BY_OTHER, "release --strict: the lock is held by someone else"),
    (HELD, "--no-wait and the lock is held (or run: held by its own pipeline)"),
    (SUPERSEDED, "superseded by a newer pipeline"),
    (TIMED_OUT, "timed out waiting (--wait, --max-retries)"),
    (
        LEASE_LOST,
        "lease lost while holding it (run, renew), or release/renew of a grant taken over from us",
    ),
    (ACCESS_DENIED, "access denied by the store"),
    (
        CONFIG,
        "configuration: no table/bucket, wrong key schema, bad record, no credentials or region",
    ),
    (STATE_REFUSED, "state put/delete refused: a newer fence or another version is stored"),
    (
        MAX_DURATION,
        "run --max-duration: the command ran too long and was stopped; the lock was released",
    ),
];

/// The shell's convention for a process stopped by signal `sig`: 128 + N (143 for TERM).
pub fn after_signal(sig: i32) -> u8 {
    u8::try_from(128 + sig.clamp(0, 127)).unwrap_or(UNEXPECTED)
}
