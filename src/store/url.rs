//! Store URLs: `dynamodb://TABLE`, `s3://BUCKET/PREFIX`, `file:///DIR`.

use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// Where the locks live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// One DynamoDB item per lock.
    DynamoDb {
        /// Table name.
        table: String,
    },
    /// One S3 object per lock.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix without leading or trailing `/`; may be empty.
        prefix: String,
    },
    /// One JSON file per lock on this host.
    File {
        /// Absolute directory.
        dir: PathBuf,
    },
}

/// The default store when nothing is configured.
pub const DEFAULT_TABLE: &str = "pipeline-locks";

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::DynamoDb { table } => write!(f, "dynamodb://{table}"),
            StoreUrl::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            StoreUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            StoreUrl::File { dir } => write!(f, "file://{}", dir.display()),
        }
    }
}

impl StoreUrl {
    /// Parses and validates a store URL.
    pub fn parse(url: &str) -> Result<StoreUrl> {
        let usage = |why: &str| {
            Error::Usage(format!(
                "invalid store URL {url:?}: {why}; expected dynamodb://TABLE, s3://BUCKET/PREFIX or file:///DIR"
            ))
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| usage("no scheme"))?;
        match scheme {
            "dynamodb" => Self::dynamodb(rest.trim_end_matches('/')),
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                Self::s3(bucket, prefix)
            }
            "file" => {
                if !rest.starts_with('/') {
                    return Err(usage("a file store needs an absolute path (file:///DIR)"));
                }
                Ok(StoreUrl::File { dir: PathBuf::from(rest) })
            }
            _ => Err(usage(&format!("unknown scheme {scheme:?}"))),
        }
    }

    /// Refuses, before any request, a lock name this store cannot hold (docs/design.md,
    /// "Leases in practice (v2)"): a file name has at most 255 bytes, an S3 key 1024, both after the
    /// name is percent-encoded; a DynamoDB key may have 2048 (more than the 1024 every name is
    /// held to already).
    pub fn check_lock_name(&self, name: &str) -> Result<()> {
        let (what, len, limit) = match self {
            StoreUrl::DynamoDb { .. } => return Ok(()),
            StoreUrl::File { .. } => ("file name", encode_name(name).len() + super::file::SUFFIX.len(), 255),
            StoreUrl::S3 { prefix, .. } => ("object key", super::s3::object_key(prefix, name).len(), 1024),
        };
        if len > limit {
            return Err(Error::Usage(format!(
                "the lock name is too long for {self}: its {what} would be {len} bytes once encoded \
                 (every byte but A-Z a-z 0-9 . _ - takes three), and the store allows at most {limit}; use a shorter --lock"
            )));
        }
        Ok(())
    }

    /// A DynamoDB store, checking the table name as DynamoDB would.
    pub fn dynamodb(table: &str) -> Result<StoreUrl> {
        let ok = (3..=255).contains(&table.len()) && table.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok {
            return Err(Error::Usage(format!(
                "invalid DynamoDB table name {table:?}: 3 to 255 characters of a-z, A-Z, 0-9, '_', '-', '.'"
            )));
        }
        Ok(StoreUrl::DynamoDb { table: table.to_string() })
    }

    /// An S3 store, checking the bucket name and that the prefix cannot climb out.
    pub fn s3(bucket: &str, prefix: &str) -> Result<StoreUrl> {
        if bucket.is_empty() {
            return Err(Error::Usage("s3:// store without a bucket: use s3://BUCKET/PREFIX or --bucket".into()));
        }
        let ok = (3..=63).contains(&bucket.len()) && bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-".contains(c));
        if !ok {
            return Err(Error::Usage(format!(
                "invalid S3 bucket name {bucket:?}: 3 to 63 characters of a-z, 0-9, '.', '-'"
            )));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|s| s == ".." || s == ".") || prefix.contains("//") {
            return Err(Error::Usage(format!("invalid S3 prefix {prefix:?}: no '.', '..' or empty segments")));
        }
        Ok(StoreUrl::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }
}

/// Encodes a lock name for a file name or object key: keeps `[A-Za-z0-9._-]`, writes every
/// other byte as `%XX`, so no name can contain a path separator or climb out of its directory.
pub fn encode_name(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, NAME_SAFE).to_string()
}

/// What a name keeps as it is in a file or object name: letters, digits and `._-`.
const NAME_SAFE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'.').remove(b'_').remove(b'-');

/// Reverses [`encode_name`]; `None` for what it cannot have produced (a foreign file or key).
pub fn decode_name(encoded: &str) -> Option<String> {
    let name = percent_encoding::percent_decode_str(encoded).decode_utf8().ok()?;
    (encode_name(&name) == encoded).then(|| name.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_a_store_cannot_hold_are_refused_with_its_limit() {
        let file = StoreUrl::parse("file:///tmp/x").unwrap();
        assert!(file.check_lock_name(&"a".repeat(250)).is_ok());
        let err = file.check_lock_name(&"a".repeat(251)).unwrap_err().to_string();
        assert!(
            err.contains("file:///tmp/x") && err.contains("at most 255") && err.contains("256 bytes"),
            "{err}"
        );
        // Encoding triples every other byte: 83 slashes and the suffix are 254 bytes, 84 are 257.
        assert!(file.check_lock_name(&"/".repeat(83)).is_ok());
        assert!(file.check_lock_name(&"/".repeat(84)).is_err());
        let s3 = StoreUrl::parse("s3://bkt/ci").unwrap();
        assert!(s3.check_lock_name(&"a".repeat(1016)).is_ok());
        let err = s3.check_lock_name(&"a".repeat(1017)).unwrap_err().to_string();
        assert!(err.contains("s3://bkt/ci") && err.contains("at most 1024"), "{err}");
        assert!(matches!(s3.check_lock_name(&"/".repeat(400)), Err(Error::Usage(_))));
        assert!(StoreUrl::dynamodb("tbl").unwrap().check_lock_name(&"/".repeat(1024)).is_ok());
    }

    #[test]
    fn parses_each_scheme() {
        assert_eq!(StoreUrl::parse("dynamodb://locks").unwrap(), StoreUrl::DynamoDb { table: "locks".into() });
        assert_eq!(
            StoreUrl::parse("s3://my-bucket/ci/locks/").unwrap(),
            StoreUrl::S3 {
                bucket: "my-bucket".into(),
                prefix: "ci/locks".into()
            }
        );
        assert_eq!(StoreUrl::parse("s3://my-bucket").unwrap().to_string(), "s3://my-bucket");
        assert_eq!(StoreUrl::parse("file:///tmp/x").unwrap(), StoreUrl::File { dir: "/tmp/x".into() });
    }

    #[test]
    fn refuses_bad_urls() {
        for bad in [
            "locks",
            "dynamodb://",
            "dynamodb://a b",
            "s3://",
            "s3:///prefix",
            "s3://b/../x",
            "s3://Bad",
            "file://rel",
            "ftp://x",
        ] {
            assert!(matches!(StoreUrl::parse(bad), Err(Error::Usage(_))), "{bad} accepted");
        }
    }

    #[test]
    fn names_round_trip_and_cannot_escape() {
        for name in ["group/project", "../../etc/passwd", "deploy prod", "ünï", "a%b"] {
            let e = encode_name(name);
            assert!(!e.contains('/'), "{e}");
            assert_eq!(decode_name(&e).as_deref(), Some(name));
        }
        assert_eq!(encode_name("prod-1.x_y"), "prod-1.x_y");
        assert_eq!(encode_name("a/b c~"), "a%2Fb%20c%7E");
        // Not what encode_name writes: foreign files and keys are not lock names.
        assert_eq!(decode_name("a%2fb"), None);
        assert_eq!(decode_name("a b"), None);
        assert_eq!(decode_name("a%zz"), None);
        assert_eq!(decode_name("%FF"), None);
    }
}
