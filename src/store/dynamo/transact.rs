//! Several locks at once on DynamoDB: one TransactWriteItems of the UpdateItems that each lock's
//! write would be alone, then one TransactGetItems for the records they made (a transaction
//! answers with no attributes, and the grants need their fences). Neither call needs an IAM
//! action of its own: each Update is allowed by `dynamodb:UpdateItem`, each Get by
//! `dynamodb:GetItem`.

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{Get, ReturnConsumedCapacity, ReturnValuesOnConditionCheckFailure, TransactGetItem, TransactWriteItem, Update};

use super::expr::{condition_for, names, update_for, used_names};
use super::{DynamoStore, Item};
use crate::error::{Error, Result};
use crate::store::aws;
use crate::store::{Observed, State, Store, Write, WrittenAll};

/// The most actions one transaction may hold (DynamoDB's limit).
pub const MAX_ITEMS: usize = 100;

fn built<T, E: std::error::Error + Send + Sync + 'static>(r: std::result::Result<T, E>) -> Result<T> {
    r.map_err(|e| Error::other("cannot build a DynamoDB transaction", e))
}

impl DynamoStore {
    /// See [`crate::store::Store::write_all`]. `None` for writes a transaction cannot make
    /// here: break-glass puts, dequeuing grants, or more than [`MAX_ITEMS`].
    pub(super) async fn transact(&self, writes: &[Write<'_>]) -> Result<Option<WrittenAll>> {
        if writes.is_empty() || writes.len() > MAX_ITEMS {
            return Ok(None);
        }
        let mut items = Vec::with_capacity(writes.len());
        for w in writes {
            let (update, mut values, keys) = update_for(w, false)?;
            let Some(condition) = condition_for(w, &mut values) else {
                return Ok(None);
            };
            let mut attr_names = names(&used_names(&format!("{update} {condition}")));
            attr_names.extend(keys);
            let action = built(
                Update::builder()
                    .table_name(&self.table)
                    .set_key(Some(Self::key(w.lock)))
                    .update_expression(update)
                    .condition_expression(condition)
                    .set_expression_attribute_names(Some(attr_names))
                    .set_expression_attribute_values(Some(values))
                    .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                    .build(),
            )?;
            items.push(TransactWriteItem::builder().update(action).build());
        }
        let locks = writes.iter().map(|w| w.lock).collect::<Vec<_>>().join(", ");
        let result = (self.client.transact_write_items())
            .set_transact_items(Some(items))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        match result {
            Ok(out) => {
                for c in out.consumed_capacity() {
                    self.consumed(Some(c));
                }
            }
            Err(e) => {
                if let Some(TransactWriteItemsError::TransactionCanceledException(c)) = e.as_service_error() {
                    let reasons = c.cancellation_reasons();
                    if reasons.iter().any(|r| r.code() == Some("ConditionalCheckFailed")) {
                        let mut seen = Vec::with_capacity(writes.len());
                        for (w, r) in writes.iter().zip(reasons) {
                            seen.push(match (r.code(), r.item()) {
                                (Some("ConditionalCheckFailed"), Some(item)) => Some(self.parse(w.lock, Some(item))),
                                // Emulators that ignore ALL_OLD send no item: read it instead.
                                (Some("ConditionalCheckFailed"), None) => Some(self.read(w.lock, true).await?),
                                _ => None,
                            });
                        }
                        return Ok(Some(WrittenAll::Conflict(seen)));
                    }
                    // Another transaction or write on one of the items (TransactionConflict),
                    // or throttling: nothing was written, and trying again may succeed.
                    let codes: Vec<&str> = reasons.iter().filter_map(|r| r.code()).filter(|c| *c != "None").collect();
                    return Err(Error::Unavailable {
                        message: format!("{}: the transaction over locks {locks} was cancelled ({})", self.url(), codes.join(", ")),
                        source: Some(Box::new(e)),
                    });
                }
                return Err(self.error(aws::failure(e), "TransactWriteItems", &locks));
            }
        }
        Ok(Some(WrittenAll::Done(self.read_all(writes).await?)))
    }

    /// The records of the locks `writes` wrote, read in one consistent TransactGetItems.
    async fn read_all(&self, writes: &[Write<'_>]) -> Result<Vec<crate::record::Record>> {
        let mut gets = Vec::with_capacity(writes.len());
        for w in writes {
            let get = built(Get::builder().table_name(&self.table).set_key(Some(Self::key(w.lock))).build())?;
            gets.push(TransactGetItem::builder().get(get).build());
        }
        let locks = writes.iter().map(|w| w.lock).collect::<Vec<_>>().join(", ");
        let out = (self.client.transact_get_items())
            .set_transact_items(Some(gets))
            .send()
            .await
            .map_err(|e| self.error(aws::failure(e), "TransactGetItems", &locks))?;
        let empty = Item::new();
        let mut records = Vec::with_capacity(writes.len());
        for (i, w) in writes.iter().enumerate() {
            let item = out.responses().get(i).and_then(|r| r.item()).unwrap_or(&empty);
            match self.parse(w.lock, Some(item)) {
                Observed {
                    state: State::Valid(record), ..
                } => {
                    self.trim_history(w.lock, &record).await;
                    records.push(record);
                }
                other => {
                    return Err(Error::Config(format!(
                        "{}: lock {:?} reads back as {:?} right after the transaction that granted it; another tool may be \
                         writing to this table",
                        self.url(),
                        w.lock,
                        other.state
                    )));
                }
            }
        }
        Ok(records)
    }
}
