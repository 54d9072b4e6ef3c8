//! Record parsing, as a property: whatever bytes a lock record holds, reading it through the
//! public file-store path never panics, never errs, and never finds it free. An unparseable
//! record is `Corrupt` (DESIGN rule 8); a `Valid` one is exactly what serde and `validate`
//! accept, and survives a write and a read back. The S3 store reads the same bytes with the
//! same parser.

mod support;

use pipeline_lock::record::Record;
use pipeline_lock::store::file::FileStore;
use pipeline_lock::store::{State, Store};
use proptest::prelude::*;

fn valid_json() -> String {
    r#"{"LockID":"p","Owner":"me","Token":"t0","Fence":7,"Rvn":"r7","AcquiredAt":1000,"RenewedAt":2000,"LeaseExpiresAt":62000,"ExpiresAt":99,"Holder":{"Ci":"local","Pid":1},"Waiters":{"w1":{"Owner":"o","EnqueuedAt":1,"SeenAt":2}},"History":[{"Event":"acquired","Owner":"me","Fence":7,"At":1000}]}"#.to_string()
}

/// JSON values built from the record's own field names, so that many of them get far
/// into the record's deserializer before they go wrong.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<u64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| serde_json::json!(f)),
        "[a-z0-9]{0,6}".prop_map(serde_json::Value::String),
        Just(serde_json::json!("p")),
    ];
    let keys = prop_oneof![
        Just("LockID"),
        Just("Owner"),
        Just("Token"),
        Just("Fence"),
        Just("Rvn"),
        Just("AcquiredAt"),
        Just("RenewedAt"),
        Just("LeaseExpiresAt"),
        Just("ExpiresAt"),
        Just("Holder"),
        Just("Waiters"),
        Just("History"),
        Just("Event"),
        Just("At"),
        Just("EnqueuedAt"),
        Just("SeenAt"),
        Just("Other"),
    ];
    leaf.prop_recursive(3, 32, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(keys.clone().prop_map(str::to_string), inner, 0..8)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Bytes: arbitrary, JSON-shaped, or a valid record cut, spliced or with a field mangled.
fn record_bytes() -> impl Strategy<Value = Vec<u8>> {
    let valid = valid_json();
    let v2 = valid.clone();
    let v3 = valid.clone();
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        (0..valid.len()).prop_map(move |cut| v2.as_bytes()[..cut].to_vec()),
        (0..valid.len(), any::<u8>()).prop_map(move |(at, b)| {
            let mut x = v3.clone().into_bytes();
            x[at] = b;
            x
        }),
        (
            json_value(),
            prop::sample::select(vec![
                "LockID",
                "Owner",
                "Token",
                "Fence",
                "Rvn",
                "AcquiredAt",
                "RenewedAt",
                "Holder",
                "Waiters",
                "History"
            ])
        )
            .prop_map(move |(v, key)| {
                let mut r: serde_json::Value = serde_json::from_str(&valid).unwrap();
                r[key] = v;
                r.to_string().into_bytes()
            }),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Whatever the bytes: the read answers (no panic, no error), an unparseable record is
    /// Corrupt (never Absent, never free), and a Valid one is exactly what serde and
    /// `validate` accept, and survives a write and a read back unchanged.
    #[test]
    fn any_bytes_read_back_as_valid_or_corrupt(bytes in record_bytes()) {
        let dir = std::env::temp_dir().join(support::unique("pipeline-lock-tests/proptest"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("p.lock"), &bytes).unwrap();
        let store = FileStore::open(&dir).unwrap();
        let observed = runtime().block_on(store.read("p", true)).unwrap();
        let direct = serde_json::from_slice::<Record>(&bytes).ok().filter(|r| r.validate("p").is_ok());
        match (&observed.state, direct) {
            (State::Valid(r), Some(d)) => {
                prop_assert_eq!(&r.lock_id, &d.lock_id);
                prop_assert_eq!(r.fence, d.fence);
                prop_assert_eq!(&r.owner, &d.owner);
                // What we would write back parses to the same record.
                let again: Record = serde_json::from_slice(&serde_json::to_vec(r).unwrap()).unwrap();
                prop_assert_eq!(&again, r);
            }
            (State::Corrupt(why), None) => prop_assert!(!why.is_empty()),
            (state, direct) => prop_assert!(false, "read {:?}, but serde+validate say {:?}", state, direct.is_some()),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Serde alone never panics on any JSON value, and what validates round-trips.
    #[test]
    fn record_serde_round_trips(v in json_value()) {
        if let Ok(r) = serde_json::from_value::<Record>(v)
            && r.validate(&r.lock_id.clone()).is_ok()
        {
            let back: Record = serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
            prop_assert_eq!(back, r);
        }
    }
}

#[test]
fn the_valid_sample_is_valid() {
    let r: Record = serde_json::from_str(&valid_json()).unwrap();
    assert!(r.validate("p").is_ok());
}
