//! S3's state objects: `PREFIX/.pipeline-lock-state/ENCODED.json`, written with the same
//! conditional PutObject as the lock objects (If-None-Match: * to create, If-Match: ETAG to
//! change). The key segment has a `/` after the prefix, which no encoded lock name has, so
//! `list` skips these objects.

use async_trait::async_trait;

use super::super::encode_name;
use super::super::state_objects::{STATE_DIR, STATE_SUFFIX, StateObjects};
use super::super::whole::{Object, PutMode, PutOutcome};
use super::{Etag, S3Bucket, list_prefix};
use crate::error::Result;

/// The object key of a state key: under the prefix, in the state segment, encoded so that it
/// cannot climb out of it.
pub(crate) fn state_object_key(prefix: &str, key: &str) -> String {
    format!("{}{STATE_DIR}/{}{STATE_SUFFIX}", list_prefix(prefix.trim_matches('/')), encode_name(key))
}

#[async_trait]
impl StateObjects for S3Bucket {
    async fn get_state(&self, key: &str) -> Result<Option<Object<Etag>>> {
        self.fetch_key(&state_object_key(&self.prefix, key)).await
    }

    async fn put_state(&self, key: &str, body: Vec<u8>, mode: PutMode<'_, Etag>) -> Result<PutOutcome<Etag>> {
        self.put_key(&state_object_key(&self.prefix, key), body, mode).await
    }

    fn state_location(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, state_object_key(&self.prefix, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_keys_live_beside_the_locks_where_no_lock_name_can_be() {
        assert_eq!(state_object_key("ci", "deployed/prod"), "ci/.pipeline-lock-state/deployed%2Fprod.json");
        assert_eq!(state_object_key("", "x"), ".pipeline-lock-state/x.json");
        assert_eq!(state_object_key("ci", "../../x"), "ci/.pipeline-lock-state/..%2F..%2Fx.json");
        // The listing of locks does not take a state object for a lock.
        assert_eq!(super::super::lock_name("ci", &state_object_key("ci", "deploy")), None);
        assert_eq!(super::super::lock_name("", &state_object_key("", "deploy")), None);
    }
}
