use super::*;

fn entry(version: u64, fence: u64) -> Entry {
    Entry {
        key: "k".into(),
        value: Some("deployed v2".into()),
        format: Format::Text,
        version,
        fence,
        writer: "new".into(),
        written_at: 1,
    }
}

fn put(fence: u64, if_version: Option<u64>) -> StateWrite {
    StateWrite {
        key: "k".into(),
        value: Some(("deployed v1".into(), Format::Text)),
        fence,
        if_version,
        writer: "old".into(),
    }
}

#[test]
fn a_write_below_the_stored_fence_is_refused_whatever_its_version() {
    let stored = entry(3, 10);
    assert_eq!(refusal(&put(9, None), Some(&stored)), Some(Refusal::Fence { stored: 10 }));
    assert_eq!(refusal(&put(9, Some(3)), Some(&stored)), Some(Refusal::Fence { stored: 10 }));
    assert_eq!(refusal(&put(10, None), Some(&stored)), None, "the same holder writes again");
    assert_eq!(refusal(&put(11, None), Some(&stored)), None);
}

#[test]
fn if_version_pins_the_version_read_and_zero_means_never_written() {
    let stored = entry(3, 0);
    assert_eq!(refusal(&put(0, Some(2)), Some(&stored)), Some(Refusal::Version { stored: 3 }));
    assert_eq!(refusal(&put(0, Some(3)), Some(&stored)), None);
    assert_eq!(refusal(&put(0, Some(0)), None), None);
    assert_eq!(refusal(&put(0, Some(1)), None), Some(Refusal::Version { stored: 0 }));
    assert_eq!(refusal(&put(0, Some(0)), Some(&stored)), Some(Refusal::Version { stored: 3 }));
}

#[test]
fn the_next_entry_counts_on_and_never_lowers_the_fence() {
    let stored = entry(3, 10);
    let next = next_entry(&put(12, None), Some(&stored), 99);
    assert_eq!((next.version, next.fence, next.writer.as_str(), next.written_at), (4, 12, "old", 99));
    let first = next_entry(&put(5, None), None, 1);
    assert_eq!((first.version, first.fence), (1, 5));
    let mut delete = put(10, None);
    delete.value = None;
    let gone = next_entry(&delete, Some(&stored), 2);
    assert_eq!((gone.value, gone.version, gone.fence), (None, 4, 10), "a delete keeps counting");
}

#[test]
fn values_are_bounded_utf8_and_json_when_asked() {
    assert_eq!(check_value("--value", b"v1".to_vec(), false).unwrap(), ("v1".into(), Format::Text));
    let big = vec![b'x'; MAX_VALUE_BYTES + 1];
    let err = check_value("--value", big, false).unwrap_err();
    assert!(err.to_string().contains("65537 bytes"), "{err}");
    assert!(check_value("--value", vec![b'x'; MAX_VALUE_BYTES], false).is_ok());
    assert!(check_value("--file f", vec![0xff, 0xfe], false).is_err());
    let (doc, format) = check_value("--value", b"{ \"sha\" : \"abc\" }".to_vec(), true).unwrap();
    assert_eq!((doc.as_str(), format), ("{\"sha\":\"abc\"}", Format::Json));
    assert!(check_value("--value", b"{not json".to_vec(), true).is_err());
}

#[test]
fn keys_are_checked_for_the_store_they_go_to() {
    let file = StoreUrl::parse("file:///tmp/x").unwrap();
    let s3 = StoreUrl::parse("s3://bucket/ci").unwrap();
    let dynamo = StoreUrl::parse("dynamodb://table").unwrap();
    for url in [&file, &s3, &dynamo] {
        assert!(check_key(url, "").is_err());
        assert!(check_key(url, "a\nb").is_err());
        assert!(check_key(url, &"k".repeat(1025)).is_err());
        assert_eq!(check_key(url, "deployed/prod").unwrap(), "deployed/prod");
    }
    // 100 slashes are 300 bytes once encoded: too long for a file name, fine for the others.
    let slashes = "/".repeat(100);
    assert!(check_key(&file, &slashes).unwrap_err().to_string().contains("255"));
    assert!(check_key(&s3, &slashes).is_ok());
    assert!(check_key(&dynamo, &slashes).is_ok());
}

#[test]
fn a_refusal_is_exit_79_and_names_the_key_the_store_and_the_fix() {
    let err = refused_error("file:///x", &put(9, None), &Refusal::Fence { stored: 10 }, Some(&entry(3, 10)));
    assert_eq!(err.exit_code(), crate::exit::STATE_REFUSED);
    let text = err.to_string();
    assert!(text.contains("\"k\"") && text.contains("file:///x") && text.contains("stale"), "{text}");
    let unfenced = refused_error("file:///x", &put(0, None), &Refusal::Fence { stored: 10 }, None).to_string();
    assert!(unfenced.contains("--fence 10"), "{unfenced}");
    let version = refused_error("file:///x", &put(10, Some(2)), &Refusal::Version { stored: 3 }, None).to_string();
    assert!(version.contains("state get"), "{version}");
}
