//! The DynamoDB store: one item per lock, partition key `LockID` (S). Every write is an
//! UpdateItem (or, for break-glass over a corrupt item, a PutItem) under a condition, with
//! `ReturnValuesOnConditionCheckFailure=ALL_OLD` so a refusal costs no second request.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnConsumedCapacity, ReturnValue, ReturnValuesOnConditionCheckFailure};

use super::aws::{self, AwsOptions, Failure, Kind, Meter};
use super::{Check, ListQuery, Observed, Page, State, Store, Version, WaiterUpdate, Write, Written, WrittenAll};
use crate::clock::StoreClock;
use crate::error::{Error, Result};
use crate::record::{Action, HISTORY_LEN, Record, SharedOp};

mod doctor;
mod expr;
mod queue;
mod state;
mod transact;

pub use transact::MAX_ITEMS;

use expr::{condition_for, names, update_for, used_names};

/// A DynamoDB item: attribute name to value.
type Item = HashMap<String, AttributeValue>;

/// What a DynamoDB error answer means for us, decided once from its code and message (the
/// service says some of these only in the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// The table does not exist.
    NoTable,
    /// An update names a key inside a map that is gone: the `Waiters` map a grant dequeues
    /// from was dropped by a break-glass rewrite.
    MissingPath,
    /// The key does not match the table's key schema.
    WrongKey,
    /// Any other request the service refuses as invalid.
    Invalid,
    /// Anything else: access, throttling, outages; mapped by [`Failure::into_error`].
    Other,
}

impl Answer {
    fn of(failure: &Failure) -> Answer {
        let Kind::Service { code, message, .. } = &failure.kind else {
            return Answer::Other;
        };
        match code.as_str() {
            "ResourceNotFoundException" => Answer::NoTable,
            "ValidationException" if message.contains("document path") => Answer::MissingPath,
            "ValidationException" if message.contains("key element") => Answer::WrongKey,
            "ValidationException" => Answer::Invalid,
            _ => Answer::Other,
        }
    }
}

/// Locks in one DynamoDB table.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    meter: Meter,
    /// Write capacity units the successful writes consumed (ReturnConsumedCapacity=TOTAL),
    /// in thousandths.
    write_milliunits: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl DynamoStore {
    /// Connects with the standard AWS chain plus `aws` overrides. Fails fast (exit 78) when
    /// there is no region or no credentials; does not touch the table.
    pub async fn connect(table: &str, opts: &AwsOptions) -> Result<DynamoStore> {
        let config = aws::load(opts, &format!("dynamodb://{table}")).await?;
        Ok(Self::from_config(table, &config))
    }

    /// A store on an AWS configuration the caller built (credentials, region, endpoint).
    pub fn from_config(table: &str, config: &aws_config::SdkConfig) -> DynamoStore {
        let meter = Meter::default();
        let conf = aws_sdk_dynamodb::config::Builder::from(config).interceptor(meter.clone()).build();
        DynamoStore {
            client: Client::from_conf(conf),
            table: table.to_string(),
            meter,
            write_milliunits: Default::default(),
        }
    }

    /// Counts the write units an answer says it consumed.
    fn consumed(&self, capacity: Option<&aws_sdk_dynamodb::types::ConsumedCapacity>) {
        if let Some(units) = capacity.and_then(|c| c.capacity_units()) {
            let milli = (units * 1000.0).round() as u64;
            self.write_milliunits.fetch_add(milli, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn key(lock: &str) -> Item {
        HashMap::from([("LockID".to_string(), AttributeValue::S(lock.to_string()))])
    }

    /// Maps an SDK failure of `action`, with the table-specific cases first.
    fn error(&self, failure: Failure, action: &str, lock: &str) -> Error {
        let store = self.url();
        let refused = |hint: &str| {
            let message = match &failure.kind {
                Kind::Service { message, .. } => message.as_str(),
                _ => "",
            };
            Error::Config(format!("{store}: {action} of lock {lock:?} was refused: {message}{hint}"))
        };
        match Answer::of(&failure) {
            Answer::NoTable => Error::Config(format!(
                "{store}: table {t:?} does not exist in this account and region (lock {lock:?}). Create it with the \
                 Terraform module in terraform/, or: aws dynamodb create-table --table-name {t} \
                 --attribute-definitions AttributeName=LockID,AttributeType=S --key-schema \
                 AttributeName=LockID,KeyType=HASH --billing-mode PAY_PER_REQUEST",
                t = self.table
            )),
            Answer::WrongKey => refused("; the table's key schema must be LockID (String) alone as partition key"),
            Answer::MissingPath | Answer::Invalid => refused(""),
            Answer::Other => failure.into_error(&format!("dynamodb:{action}"), &format!("table {} (lock {lock:?})", self.table), &store),
        }
    }

    fn parse(&self, lock: &str, item: Option<&Item>) -> Observed {
        let Some(item) = item.filter(|i| !i.is_empty()) else {
            return Observed {
                state: State::Absent,
                version: Version::default(),
            };
        };
        let version = Version::of(item.clone());
        let whole = serde_dynamo::AttributeValue::M(serde_dynamo::Item::from(item.clone()).into());
        let state = match serde_path_to_error::deserialize::<_, Record>(serde_dynamo::Deserializer::from_attribute_value(whole)) {
            Ok(mut record) => match record.validate(lock) {
                Ok(()) => {
                    record.fill_history_fences();
                    State::Valid(record)
                }
                Err(why) => State::Corrupt(why),
            },
            Err(e) => State::Corrupt(super::at_path(&e)),
        };
        Observed { state, version }
    }

    /// Trims History in a batch once it is twice its length, so a grant stays one request.
    async fn trim_history(&self, lock: &str, record: &Record) {
        let excess = record.history.len().saturating_sub(HISTORY_LEN);
        if record.history.len() <= 2 * HISTORY_LEN {
            return;
        }
        let remove: Vec<String> = (0..excess).map(|i| format!("#hi[{i}]")).collect();
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(lock)))
            .update_expression(format!("REMOVE {}", remove.join(", ")))
            .condition_expression("#r = :r")
            .set_expression_attribute_names(Some(names(&["#hi", "#r"])))
            .expression_attribute_values(":r", AttributeValue::S(record.rvn.clone()))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        if let Ok(out) = &result {
            self.consumed(out.consumed_capacity());
        }
        // A refusal means a newer write happened; it will trim instead. Nothing is lost.
        if let Err(e) = result {
            tracing::debug!("history trim of {lock:?} skipped: {}", crate::report::chain(&e));
        }
    }

    async fn put_exact(&self, w: &Write<'_>) -> Result<Written> {
        let base = w
            .base
            .ok_or_else(|| Error::Usage("a break-glass write needs the record it replaces".into()))?;
        let raw = base.version.get::<Item>();
        let fence = raw
            .as_ref()
            .and_then(|i| i.get("Fence"))
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse().ok());
        let record = match &base.state {
            // Over a record that parses, the change applies to it as every other write does
            // (and as the whole-record stores write it): its fence, queue and history kept.
            State::Valid(r) => r.apply(w.change),
            _ => super::salvage(w.lock, fence, w.change),
        };
        let item = serde_dynamo::to_item(&record).map_err(|e| Error::other("cannot encode the lock record", e))?;
        let mut req = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        match raw {
            None => req = req.condition_expression("attribute_not_exists(LockID)"),
            Some(raw) => {
                // Equal in every attribute we read: nothing that changed since is overwritten.
                let mut conds = Vec::new();
                for (i, (name, value)) in raw.iter().enumerate() {
                    conds.push(format!("#c{i} = :c{i}"));
                    req = req
                        .expression_attribute_names(format!("#c{i}"), name)
                        .expression_attribute_values(format!(":c{i}"), value.clone());
                }
                req = req.condition_expression(conds.join(" AND "));
            }
        }
        match req.send().await {
            Ok(out) => {
                self.consumed(out.consumed_capacity());
                Ok(Written::Done(record))
            }
            Err(e) => {
                if let Some(aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c)) = e.as_service_error() {
                    return Ok(Written::Conflict(self.parse(w.lock, c.item())));
                }
                Err(self.error(aws::failure(e), "PutItem", w.lock))
            }
        }
    }
}

#[async_trait]
impl Store for DynamoStore {
    fn url(&self) -> String {
        format!("dynamodb://{}", self.table)
    }

    fn clock(&self) -> &StoreClock {
        &self.meter.clock
    }

    fn requests(&self) -> u64 {
        self.meter.requests()
    }

    fn write_units(&self) -> Option<f64> {
        Some(self.write_milliunits.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1000.0)
    }

    async fn read(&self, lock: &str, consistent: bool) -> Result<Observed> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(lock)))
            .consistent_read(consistent)
            .send()
            .await
            .map_err(|e| self.error(aws::failure(e), "GetItem", lock))?;
        Ok(self.parse(lock, out.item()))
    }

    async fn write(&self, w: Write<'_>) -> Result<Written> {
        let dequeue = match &w.change.action {
            Action::Grant(g) | Action::Shared(SharedOp::Grant { grantee: g, .. }) => !g.dequeue.is_empty(),
            _ => false,
        };
        let failure = match self.update(&w, dequeue).await? {
            Ok(written) => return Ok(written),
            Err(failure) => failure,
        };
        if dequeue && Answer::of(&failure) == Answer::MissingPath {
            // The queue map we saw is gone (only a break-glass rewrite drops it): grant anyway.
            tracing::debug!("{}: the queue entries to remove from {:?} are gone; granting without", self.url(), w.lock);
            return self.update(&w, false).await?.map_err(|f| self.error(f, "UpdateItem", w.lock));
        }
        Err(self.error(failure, "UpdateItem", w.lock))
    }

    async fn write_all(&self, writes: &[Write<'_>]) -> Result<Option<WrittenAll>> {
        self.transact(writes).await
    }

    async fn update_waiters(&self, u: WaiterUpdate<'_>) -> Result<Option<Observed>> {
        queue::update_waiters(self, u).await
    }

    async fn list_page(&self, q: &ListQuery<'_>) -> Result<Page> {
        // One Scan request: `Limit` items evaluated, resumed at `ExclusiveStartKey` (the token
        // is a LockID, the table's whole key). A prefix is a filter on the Scan: it saves
        // transfer, not read units (see docs/design.md for the key design that would make
        // it a Query).
        let mut req = (self.client.scan().table_name(&self.table))
            .limit(q.limit.clamp(1, 1000) as i32)
            .set_exclusive_start_key(q.after.map(Self::key));
        if !q.prefix.is_empty() {
            req = req
                .filter_expression("begins_with(#k, :p)")
                .expression_attribute_names("#k", "LockID")
                .expression_attribute_values(":p", AttributeValue::S(q.prefix.to_string()));
        }
        let out = req.send().await.map_err(|e| self.error(aws::failure(e), "Scan", "*"))?;
        let items = (out.items().iter())
            // State items share the table (`state.rs`); they are not locks.
            .filter(|item| {
                !item
                    .get("LockID")
                    .and_then(|v| v.as_s().ok())
                    .is_some_and(|id| id.starts_with(state::STATE_ID_PREFIX))
            })
            .map(|item| {
                let name = item.get("LockID").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
                let observed = self.parse(&name, Some(item));
                (name, observed)
            })
            .collect();
        let next = (out.last_evaluated_key())
            .and_then(|k| k.get("LockID"))
            .and_then(|v| v.as_s().ok())
            .cloned();
        Ok(Page { items, next })
    }

    async fn doctor(&self) -> Vec<Check> {
        doctor::run(self).await
    }
}

impl DynamoStore {
    /// One conditional UpdateItem for a holder-side write (see `write`); the service's refusal
    /// (other than the condition's) comes back unmapped, for `write` to judge.
    async fn update(&self, w: &Write<'_>, dequeue: bool) -> Result<Result<Written, Failure>> {
        let (update, mut values, keys) = update_for(w, dequeue)?;
        let Some(condition) = condition_for(w, &mut values) else {
            return self.put_exact(w).await.map(Ok);
        };
        let mut names = names(&used_names(&format!("{update} {condition}")));
        names.extend(keys);
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(w.lock)))
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        if let Ok(out) = &result {
            self.consumed(out.consumed_capacity());
        }
        match result {
            Ok(out) => match self.parse(w.lock, out.attributes()).state {
                State::Valid(record) => {
                    self.trim_history(w.lock, &record).await;
                    Ok(Ok(Written::Done(record)))
                }
                other => Err(Error::Config(format!(
                    "{}: lock {:?} reads back unparseable after our write ({other:?}); another tool may be writing to this table",
                    self.url(),
                    w.lock
                ))),
            },
            Err(e) => {
                use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
                if let Some(UpdateItemError::ConditionalCheckFailedException(c)) = e.as_service_error() {
                    // Emulators that ignore ALL_OLD send no item: read it instead.
                    return Ok(Ok(Written::Conflict(match c.item() {
                        Some(item) => self.parse(w.lock, Some(item)),
                        None => self.read(w.lock, true).await?,
                    })));
                }
                Ok(Err(aws::failure(e)))
            }
        }
    }
}

#[cfg(feature = "negative-control")]
impl DynamoStore {
    /// The negative control's write around the compare-and-set (see `store::broken`).
    pub(super) async fn overwrite(&self, record: &Record) -> Result<()> {
        let item = serde_dynamo::to_item(record).map_err(|e| Error::other("negative control: cannot encode the record", e))?;
        let put = self.client.put_item().table_name(&self.table).set_item(Some(item)).send().await;
        put.map_err(|e| Error::unavailable("negative control: PutItem failed", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(code: &str, message: &str) -> Failure {
        Failure {
            kind: Kind::Service {
                code: code.into(),
                status: 400,
                message: message.into(),
            },
            source: Some("the SDK's error".into()),
        }
    }

    #[test]
    fn answers_are_classified_once_by_code_then_message() {
        let missing = "The document path provided in the update expression is invalid for update";
        assert_eq!(Answer::of(&service("ValidationException", missing)), Answer::MissingPath);
        let key = "The provided key element does not match the schema";
        assert_eq!(Answer::of(&service("ValidationException", key)), Answer::WrongKey);
        assert_eq!(
            Answer::of(&service("ValidationException", "ExpressionAttributeValues must not be empty")),
            Answer::Invalid
        );
        assert_eq!(
            Answer::of(&service("ResourceNotFoundException", "Requested resource not found")),
            Answer::NoTable
        );
        assert_eq!(Answer::of(&service("ThrottlingException", "slow down")), Answer::Other);
        let transient = Failure {
            kind: Kind::Transient("timed out".into()),
            source: None,
        };
        assert_eq!(Answer::of(&transient), Answer::Other);
    }

    #[test]
    fn the_sdk_error_stays_the_source() {
        let err = service("ThrottlingException", "slow down").into_error("dynamodb:GetItem", "table t", "dynamodb://t");
        assert_eq!(err.exit_code(), crate::exit::UNAVAILABLE, "{err}");
        let source = std::error::Error::source(&err).expect("a source");
        assert_eq!(source.to_string(), "the SDK's error");
    }
}
