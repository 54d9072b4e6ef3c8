//! The DynamoDB store: one item per lock, partition key `LockID` (S). Every write is an
//! UpdateItem (or, for break-glass over a corrupt item, a PutItem) under a condition, with
//! `ReturnValuesOnConditionCheckFailure=ALL_OLD` so a refusal costs no second request.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};

use super::aws::{self, AwsOptions, Failure, Meter};
use super::{Check, Expect, Observed, State, Store, Version, WaiterUpdate, Write, Written};
use crate::clock::StoreClock;
use crate::error::{Error, Result};
use crate::record::{Action, HISTORY_LEN, Record};

pub(super) type Item = HashMap<String, AttributeValue>;

/// Attribute-name placeholders: `Owner` is a reserved word, so every name goes through one.
const NAMES: &[(&str, &str)] = &[
    ("#k", "LockID"),
    ("#o", "Owner"),
    ("#t", "Token"),
    ("#f", "Fence"),
    ("#r", "Rvn"),
    ("#a", "AcquiredAt"),
    ("#rn", "RenewedAt"),
    ("#l", "LeaseExpiresAt"),
    ("#e", "ExpiresAt"),
    ("#h", "Holder"),
    ("#hi", "History"),
    ("#ws", "Waiters"),
    ("#sa", "SeenAt"),
];

/// Locks in one DynamoDB table.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    meter: Meter,
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
        }
    }

    pub(super) fn key(lock: &str) -> Item {
        HashMap::from([("LockID".to_string(), AttributeValue::S(lock.to_string()))])
    }

    /// Maps an SDK failure of `action`, with the table-specific cases first.
    fn error(&self, failure: Failure, action: &str, lock: &str) -> Error {
        let store = self.url();
        if let Failure::Service { code, message, .. } = &failure {
            if code == "ResourceNotFoundException" {
                return Error::Config(format!(
                    "{store}: table {t:?} does not exist in this account and region (lock {lock:?}). Create it with the \
                     Terraform module in terraform/, or: aws dynamodb create-table --table-name {t} \
                     --attribute-definitions AttributeName=LockID,AttributeType=S --key-schema \
                     AttributeName=LockID,KeyType=HASH --billing-mode PAY_PER_REQUEST",
                    t = self.table
                ));
            }
            if code == "ValidationException" {
                let hint = if message.contains("key") {
                    "; the table's key schema must be LockID (String) alone as partition key"
                } else {
                    ""
                };
                return Error::Config(format!("{store}: {action} of lock {lock:?} was refused: {message}{hint}"));
            }
        }
        failure.into_error(&format!("dynamodb:{action}"), &format!("table {} (lock {lock:?})", self.table), &store)
    }

    pub(super) fn parse(&self, lock: &str, item: Option<&Item>) -> Observed {
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
            .send()
            .await;
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
            Ok(_) => Ok(Written::Done(record)),
            Err(e) => {
                if let Some(aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c)) = e.as_service_error() {
                    return Ok(Written::Conflict(self.parse(w.lock, c.item())));
                }
                Err(self.error(aws::failure(&e), "PutItem", w.lock))
            }
        }
    }
}

/// The `ExpressionAttributeNames` for the placeholders used (DynamoDB refuses unused ones).
fn names(used: &[&str]) -> Item2 {
    NAMES
        .iter()
        .filter(|(p, _)| used.contains(p))
        .map(|(p, n)| (p.to_string(), n.to_string()))
        .collect()
}

pub(super) type Item2 = HashMap<String, String>;

/// Placeholders that occur in `expr` as whole tokens (`#h` is not `#hi`).
fn used_names(expr: &str) -> Vec<&'static str> {
    let tokens: Vec<&str> = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '#')).collect();
    NAMES.iter().map(|(p, _)| *p).filter(|p| tokens.contains(p)).collect()
}

pub(super) fn av<T: serde::Serialize>(value: &T) -> Result<AttributeValue> {
    serde_dynamo::to_attribute_value(value).map_err(|e| Error::other("cannot encode a lock attribute", e))
}

/// The update expression, values and the placeholders of queue keys for a change. With
/// `dequeue`, a grant also removes the queue entries it names (they were in the map it read).
fn update_for(w: &Write<'_>, dequeue: bool) -> Result<(String, Item, Item2)> {
    let c = w.change;
    let mut set = vec!["#r = :r".to_string()];
    let mut remove = Vec::new();
    let mut values: Item = HashMap::from([(":r".to_string(), AttributeValue::S(c.rvn.clone()))]);
    let mut opt = |name: &str, value: Option<i64>, set: &mut Vec<String>, values: &mut Item| match value {
        Some(v) => {
            set.push(format!("{name} = :{}", &name[1..]));
            values.insert(format!(":{}", &name[1..]), AttributeValue::N(v.to_string()));
        }
        None => remove.push(name.to_string()),
    };
    opt("#l", c.lease_expires_at, &mut set, &mut values);
    opt("#e", c.expires_at, &mut set, &mut values);
    let now = AttributeValue::N(c.now.to_string());
    let mut keys = Item2::new();
    match &c.action {
        Action::Grant(g) => {
            set.extend(["#o = :o", "#t = :t", "#a = :now", "#rn = :now", "#h = :h"].map(String::from));
            values.insert(":o".into(), AttributeValue::S(g.owner.clone()));
            values.insert(":t".into(), AttributeValue::S(g.token.clone()));
            values.insert(":h".into(), av(&g.holder)?);
            values.insert(":now".into(), now);
            // An item created here starts its fence at the store ms of the write (see
            // `Record::created`); one that exists counts on from its own.
            set.push("#f = if_not_exists(#f, :base) + :one".into());
            values.insert(":base".into(), AttributeValue::N(c.fence_floor.to_string()));
            values.insert(":one".into(), AttributeValue::N("1".into()));
            for (i, token) in g.dequeue.iter().enumerate().filter(|_| dequeue) {
                // Removing map keys leaves Rvn and the holder fields alone; no path overlaps them.
                remove.push(format!("#ws.#q{i}"));
                keys.insert(format!("#q{i}"), token.clone());
                keys.insert("#ws".into(), "Waiters".into());
            }
        }
        Action::Renew { restamp, raise_fence } => {
            set.push("#rn = :now".into());
            if *restamp {
                set.push("#a = :now".into());
            }
            // Only ever asked for above the fence the caller read at this Rvn (the condition).
            if let Some(f) = raise_fence {
                set.push("#f = :nf".into());
                values.insert(":nf".into(), AttributeValue::N(f.to_string()));
            }
            values.insert(":now".into(), now);
        }
        Action::Release => remove.extend(["#o", "#t", "#a", "#rn", "#h"].map(String::from)),
    }
    if let Some(event) = &c.event {
        set.push("#hi = list_append(if_not_exists(#hi, :empty), :ev)".into());
        values.insert(":empty".into(), AttributeValue::L(vec![]));
        values.insert(":ev".into(), AttributeValue::L(vec![av(event)?]));
    }
    let mut expr = format!("SET {}", set.join(", "));
    if !remove.is_empty() {
        expr.push_str(&format!(" REMOVE {}", remove.join(", ")));
    }
    Ok((expr, values, keys))
}

/// What a read checks before it calls an item a valid record, as far as a condition can say
/// it (docs/design.md, rule 8): a Fence that is a number not below zero, an Rvn that is a
/// string, a History that is a list if any. The server evaluates the condition, not our parser,
/// so without this an Owner or Token condition would hold on an item that reads as corrupt
/// (`Expect::holds` never does) and a holder write would land on it without break-glass.
/// Damage deeper than types (a History entry of the wrong shape, a fractional Fence) only
/// shows when the record is read back after the write.
const WELL_FORMED: &str =
    "attribute_type(#f, :tn) AND #f >= :zero AND attribute_type(#r, :ts) AND (attribute_not_exists(#hi) OR attribute_type(#hi, :tl))";

/// A held record carries an Owner, its Token and its times (`Record::validate`).
const HELD: &str = "attribute_type(#o, :ts) AND attribute_type(#t, :ts) AND attribute_type(#a, :tn) AND attribute_type(#rn, :tn)";

/// The condition for an expectation (docs/design.md, rules 2, 4, 5); `None` for `Expect::Exact`,
/// which is written whole with PutItem (see `put_exact`). Every other condition also requires
/// an item that parses as far as types go ([`WELL_FORMED`]).
fn condition_for(expect: &Expect, blind: bool, values: &mut Item) -> Option<String> {
    let mut s = |k: &str, v: &str| {
        values.insert(k.to_string(), AttributeValue::S(v.to_string()));
    };
    s(":tn", "N");
    s(":ts", "S");
    s(":tl", "L");
    let condition = match expect {
        // A free tombstone must still be a well-formed one: a grant over an item whose Fence
        // is missing or mistyped would restart the fence. A blind grant must not jump a queue
        // it never saw either (see `Write::admits`).
        Expect::Vacant => {
            let queue = if blind {
                " AND (attribute_not_exists(#ws) OR size(#ws) = :zero)"
            } else {
                ""
            };
            format!("attribute_not_exists(#k) OR (attribute_not_exists(#o) AND attribute_not_exists(#t) AND {WELL_FORMED}{queue})")
        }
        Expect::Owner(o) => {
            s(":eo", o);
            format!("#o = :eo AND {HELD} AND {WELL_FORMED}")
        }
        Expect::Token(t) => {
            s(":et", t);
            format!("#t = :et AND {HELD} AND {WELL_FORMED}")
        }
        Expect::TokenRvn { token, rvn } => {
            s(":et", token);
            s(":er", rvn);
            format!("#t = :et AND #r = :er AND {HELD} AND {WELL_FORMED}")
        }
        // Held or free, but one or the other: a Token without an Owner is corrupt.
        Expect::Rvn(rvn) => {
            s(":er", rvn);
            format!("#r = :er AND ((attribute_not_exists(#o) AND attribute_not_exists(#t)) OR ({HELD})) AND {WELL_FORMED}")
        }
        Expect::Exact => return None,
    };
    values.insert(":zero".into(), AttributeValue::N("0".into()));
    Some(condition)
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

    async fn read(&self, lock: &str, consistent: bool) -> Result<Observed> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(lock)))
            .consistent_read(consistent)
            .send()
            .await
            .map_err(|e| self.error(aws::failure(&e), "GetItem", lock))?;
        Ok(self.parse(lock, out.item()))
    }

    async fn write(&self, w: Write<'_>) -> Result<Written> {
        match self.update(&w, true).await {
            // The queue map we saw is gone (only a break-glass rewrite drops it): grant anyway.
            Err(Error::Config(m)) if m.contains("document path") && matches!(&w.change.action, Action::Grant(g) if !g.dequeue.is_empty()) => {
                tracing::debug!("{}: the queue entries to remove are gone ({m}); granting without", self.url());
                self.update(&w, false).await
            }
            other => other,
        }
    }

    async fn update_waiters(&self, u: WaiterUpdate<'_>) -> Result<Option<Observed>> {
        super::dynamo_queue::update_waiters(self, u).await
    }

    async fn list(&self) -> Result<Vec<(String, Observed)>> {
        let mut out = Vec::new();
        let mut pages = self.client.scan().table_name(&self.table).into_paginator().items().send();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|e| self.error(aws::failure(&e), "Scan", "*"))?;
            let name = item.get("LockID").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
            let observed = self.parse(&name, Some(&item));
            out.push((name, observed));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn doctor(&self) -> Vec<Check> {
        super::doctor_dynamo::run(self).await
    }
}

impl DynamoStore {
    /// One conditional UpdateItem for a holder-side write (see `write`).
    async fn update(&self, w: &Write<'_>, dequeue: bool) -> Result<Written> {
        let (update, mut values, keys) = update_for(w, dequeue)?;
        let Some(condition) = condition_for(&w.expect, w.is_blind_grant(), &mut values) else {
            return self.put_exact(w).await;
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
            .send()
            .await;
        match result {
            Ok(out) => match self.parse(w.lock, out.attributes()).state {
                State::Valid(record) => {
                    self.trim_history(w.lock, &record).await;
                    Ok(Written::Done(record))
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
                    return Ok(Written::Conflict(match c.item() {
                        Some(item) => self.parse(w.lock, Some(item)),
                        None => self.read(w.lock, true).await?,
                    }));
                }
                Err(self.error(aws::failure(&e), "UpdateItem", w.lock))
            }
        }
    }

    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    pub(super) fn table(&self) -> &str {
        &self.table
    }

    pub(super) fn map_error(&self, failure: Failure, action: &str, lock: &str) -> Error {
        self.error(failure, action, lock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Change, Event, EventKind, Grantee, Holder};

    #[test]
    fn placeholders_are_matched_as_whole_tokens() {
        assert_eq!(used_names("SET #hi = list_append(#hi, :ev)"), vec!["#hi"]);
        assert_eq!(used_names("SET #h = :h, #r = :r"), vec!["#r", "#h"]);
    }

    #[test]
    fn grant_sets_holder_fields_and_counts_the_fence_on_from_store_ms() {
        let change = Change {
            action: Action::Grant(Grantee {
                owner: "o".into(),
                token: "t".into(),
                holder: Holder::default(),
                dequeue: vec!["q".into()],
            }),
            rvn: "r".into(),
            now: 5,
            lease_expires_at: None,
            expires_at: None,
            fence_floor: 5,
            event: Some(Event {
                event: EventKind::Acquired,
                owner: "o".into(),
                fence: None,
                at: 5,
                by: None,
                why: None,
                from: None,
            }),
        };
        let w = Write {
            lock: "l",
            expect: Expect::Vacant,
            base: None,
            change: &change,
        };
        let (expr, values, keys) = update_for(&w, true).unwrap();
        assert!(expr.contains("#f = if_not_exists(#f, :base) + :one"), "{expr}");
        assert_eq!(values[":base"], AttributeValue::N("5".into()));
        assert!(expr.contains("REMOVE #l, #e, #ws.#q0"), "{expr}");
        assert_eq!(keys["#q0"], "q");
        assert!(!update_for(&w, false).unwrap().0.contains("#ws"));
        assert!(expr.contains("#o = :o") && expr.contains("list_append"), "{expr}");
        assert_eq!(values[":one"], AttributeValue::N("1".into()));
    }

    #[test]
    fn a_blind_grant_needs_an_empty_queue() {
        let mut values = Item::new();
        assert!(condition_for(&Expect::Vacant, true, &mut values).unwrap().contains("size(#ws) = :zero"));
        assert!(!condition_for(&Expect::Vacant, false, &mut Item::new()).unwrap().contains("#ws"));
    }

    #[test]
    fn every_condition_but_exact_needs_an_item_that_parses() {
        let holder = [
            Expect::Owner("o".into()),
            Expect::Token("t".into()),
            Expect::TokenRvn {
                token: "t".into(),
                rvn: "r".into(),
            },
        ];
        for expect in holder.iter().chain(&[Expect::Vacant, Expect::Rvn("r".into())]) {
            let mut values = Item::new();
            let condition = condition_for(expect, false, &mut values).unwrap();
            assert!(condition.contains(WELL_FORMED), "{expect:?}: {condition}");
            assert_eq!(condition.contains(HELD), !matches!(expect, Expect::Vacant), "{expect:?}: {condition}");
            for v in [":tn", ":ts", ":tl", ":zero"] {
                assert!(values.contains_key(v), "{expect:?}: {v}");
            }
        }
        assert!(condition_for(&Expect::Exact, false, &mut Item::new()).is_none());
    }

    #[test]
    fn release_removes_holder_fields_and_keeps_the_fence() {
        let change = Change {
            action: Action::Release,
            rvn: "r".into(),
            now: 5,
            lease_expires_at: None,
            expires_at: Some(9),
            fence_floor: 5,
            event: None,
        };
        let w = Write {
            lock: "l",
            expect: Expect::Owner("o".into()),
            base: None,
            change: &change,
        };
        let (expr, _, _) = update_for(&w, true).unwrap();
        assert!(expr.contains("REMOVE #l, #o, #t, #a, #rn, #h"), "{expr}");
        assert!(!expr.contains("#f"), "{expr}");
    }
}
