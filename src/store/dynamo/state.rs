//! DynamoDB's state items: one item per key in the lock table, `LockID` = a marker with a
//! control character (which no lock name may contain, see `cli::validate_lock`) + the key, so
//! a state item can never be a lock's, and `list` leaves them out. A write is one conditional
//! UpdateItem: the fence and the version are checked by the service in the
//! ConditionExpression, and a refusal brings the stored item back (ALL_OLD), so neither a put
//! nor a refusal costs a second request.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};

use super::super::aws;
use super::{DynamoStore, Item};
use crate::clock::StoreClock;
use crate::error::{Error, Result};
use crate::state::{Entry, StateStore, StateWrite, StateWritten, WRITE_ROUNDS, refusal};

/// What every state item's `LockID` starts with. Lock names have no control characters.
pub(crate) const STATE_ID_PREFIX: &str = "\u{1f}state\u{1f}";

fn item_key(key: &str) -> Item {
    HashMap::from([("LockID".to_string(), AttributeValue::S(format!("{STATE_ID_PREFIX}{key}")))])
}

/// Placeholders of the attributes a state write names (`Value` is a reserved word).
const NAMES: &[(&str, &str)] = &[
    ("#k", "StateKey"),
    ("#val", "Value"),
    ("#fmt", "Format"),
    ("#v", "Version"),
    ("#f", "Fence"),
    ("#w", "Writer"),
    ("#at", "WrittenAt"),
];

/// The update and condition expressions of `w`: the fence never goes down (the condition
/// lets only a fence at or above the stored one through, so setting it is setting the
/// maximum), the version counts on, and `--if-version` pins the version read.
fn expressions(w: &StateWrite) -> (String, String) {
    let mut set = vec!["#k = :k", "#v = if_not_exists(#v, :zero) + :one", "#f = :f", "#w = :w", "#at = :at"];
    let mut update = String::new();
    match &w.value {
        Some(_) => {
            set.extend(["#val = :val", "#fmt = :fmt"]);
            update.push_str(&format!("SET {}", set.join(", ")));
        }
        None => update.push_str(&format!("SET {} REMOVE #val", set.join(", "))),
    }
    let mut condition = "(attribute_not_exists(#f) OR #f <= :f)".to_string();
    match w.if_version {
        Some(0) => condition.push_str(" AND attribute_not_exists(#v)"),
        Some(_) => condition.push_str(" AND #v = :ver"),
        None => {}
    }
    (update, condition)
}

impl DynamoStore {
    fn parse_entry(&self, key: &str, item: Option<&Item>) -> Result<Option<Entry>> {
        let Some(item) = item.filter(|i| !i.is_empty()) else {
            return Ok(None);
        };
        let entry: Entry = serde_dynamo::from_item(item.clone()).map_err(|e| {
            Error::Config(format!(
                "{}: the state item of {key:?} is not a state entry ({e}); look at it, then delete the item by hand to start the key again",
                self.url()
            ))
        })?;
        Ok(Some(entry))
    }

    async fn get_item(&self, key: &str) -> Result<Option<Entry>> {
        let out = (self.client.get_item().table_name(&self.table))
            .set_key(Some(item_key(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.error(aws::failure(e), "GetItem", key))?;
        self.parse_entry(key, out.item())
    }
}

/// Is `e` the entry `w` wrote at `now`? After a lost reply the SDK's retry meets our own
/// write; its condition then fails, and this says it landed.
fn is_ours(w: &StateWrite, e: &Entry, now: i64) -> bool {
    e.writer == w.writer && e.written_at == now && e.fence == w.fence && e.value == w.value.as_ref().map(|(v, _)| v.clone())
}

#[async_trait]
impl StateStore for DynamoStore {
    fn url(&self) -> String {
        format!("dynamodb://{}", self.table)
    }

    fn requests(&self) -> u64 {
        self.meter.requests()
    }

    fn clock(&self) -> &StoreClock {
        &self.meter.clock
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>> {
        self.get_item(key).await
    }

    async fn write(&self, w: &StateWrite) -> Result<StateWritten> {
        let (update, condition) = expressions(w);
        let used = format!("{update} {condition}");
        let names: HashMap<String, String> = (NAMES.iter())
            .filter(|(p, _)| used.split(|c: char| !(c.is_ascii_alphanumeric() || c == '#')).any(|t| t == *p))
            .map(|(p, n)| (p.to_string(), n.to_string()))
            .collect();
        for _ in 0..WRITE_ROUNDS {
            let now = self.meter.clock.now_ms();
            let mut values = HashMap::from([
                (":k".to_string(), AttributeValue::S(w.key.clone())),
                (":zero".to_string(), AttributeValue::N("0".into())),
                (":one".to_string(), AttributeValue::N("1".into())),
                (":f".to_string(), AttributeValue::N(w.fence.to_string())),
                (":w".to_string(), AttributeValue::S(w.writer.clone())),
                (":at".to_string(), AttributeValue::N(now.to_string())),
            ]);
            if let Some((value, format)) = &w.value {
                let format = serde_dynamo::to_attribute_value(format).map_err(|e| Error::other("cannot encode the state format", e))?;
                values.insert(":val".into(), AttributeValue::S(value.clone()));
                values.insert(":fmt".into(), format);
            }
            if let Some(v) = w.if_version.filter(|v| *v > 0) {
                values.insert(":ver".into(), AttributeValue::N(v.to_string()));
            }
            let result = (self.client.update_item().table_name(&self.table))
                .set_key(Some(item_key(&w.key)))
                .update_expression(&update)
                .condition_expression(&condition)
                .set_expression_attribute_names(Some(names.clone()))
                .set_expression_attribute_values(Some(values))
                .return_values(ReturnValue::AllNew)
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                .send()
                .await;
            let old = match result {
                Ok(out) => {
                    let entry = self.parse_entry(&w.key, out.attributes())?;
                    return entry
                        .map(StateWritten::Done)
                        .ok_or_else(|| Error::Config(format!("{}: the state item of {:?} reads back empty after our write", self.url(), w.key)));
                }
                Err(e) => {
                    use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
                    match e.as_service_error() {
                        // Emulators that ignore ALL_OLD send no item: read it instead.
                        Some(UpdateItemError::ConditionalCheckFailedException(c)) => match c.item() {
                            Some(item) => self.parse_entry(&w.key, Some(item))?,
                            None => self.get_item(&w.key).await?,
                        },
                        _ => return Err(self.error(aws::failure(e), "UpdateItem", &w.key)),
                    }
                }
            };
            if let Some(e) = old.as_ref().filter(|e| is_ours(w, e, now)) {
                return Ok(StateWritten::Done(e.clone()));
            }
            if let Some(why) = refusal(w, old.as_ref()) {
                return Ok(StateWritten::Refused(why, old));
            }
            // Refused, but what is there now would be admitted: it changed in between. Again.
        }
        Err(Error::Unavailable {
            message: format!(
                "{}: state {:?} kept changing under {WRITE_ROUNDS} tries to write it; try again",
                self.url(),
                w.key
            ),
            source: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(value: Option<&str>, if_version: Option<u64>) -> StateWrite {
        StateWrite {
            key: "k".into(),
            value: value.map(|v| (v.to_string(), crate::state::Format::Text)),
            fence: 7,
            if_version,
            writer: "me".into(),
        }
    }

    #[test]
    fn every_state_write_is_conditional_on_the_fence_and_pins_the_version_asked_for() {
        let (update, condition) = expressions(&write(Some("v"), None));
        assert!(update.starts_with("SET ") && update.contains("#val = :val"), "{update}");
        assert_eq!(condition, "(attribute_not_exists(#f) OR #f <= :f)");
        let (_, condition) = expressions(&write(Some("v"), Some(3)));
        assert!(condition.ends_with(" AND #v = :ver"), "{condition}");
        let (_, condition) = expressions(&write(Some("v"), Some(0)));
        assert!(condition.ends_with(" AND attribute_not_exists(#v)"), "{condition}");
        let (update, _) = expressions(&write(None, None));
        assert!(update.ends_with(" REMOVE #val") && !update.contains(":val"), "{update}");
    }

    #[test]
    fn no_lock_name_can_be_a_state_item() {
        assert!(crate::cli::validate_lock(&format!("{STATE_ID_PREFIX}x")).is_err());
    }
}
