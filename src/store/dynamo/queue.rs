//! The queue on DynamoDB: waiter entries live in the item's `Waiters` map and are written with
//! their own UpdateItem, which names only that map and keys in it. It never changes Rvn or a
//! holder field, so it cannot make a holder's renewal or a taker's compare-and-set fail.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};

use super::expr::{Names, av};
use super::{DynamoStore, Item};
use crate::error::{Error, Result};
use crate::store::{Observed, State, Store, WaiterUpdate, aws};

/// Conditional rounds a waiter update tries before leaving it to the next poll.
const WAITER_ROUNDS: u32 = 3;

/// One waiter UpdateItem: expressions, names and values.
struct WaiterPlan {
    update: String,
    condition: String,
    names: Names,
    values: Item,
}

/// The UpdateItem for a waiter update over `base`, `None` when there is nothing to write.
/// It only ever names `Waiters` and keys inside it, so it never changes Rvn or a holder field.
/// DynamoDB refuses a path into a map that does not exist, and refuses to set a map and a key
/// in it in one expression (overlapping paths), so the first entry creates the map whole,
/// conditional on its absence; later ones set or remove one key each, conditional on its
/// presence. Either refusal comes back as a failed condition with the item, and we re-plan.
fn waiter_plan(u: &WaiterUpdate<'_>, base: &Observed) -> Result<Option<WaiterPlan>> {
    let State::Valid(record) = &base.state else {
        // Absent (the lock is free; nothing to queue for) or unreadable: never write waiters.
        return Ok(None);
    };
    let has_map = match base.version.get::<Item>() {
        Some(item) => item.contains_key("Waiters"),
        None => !record.waiters.is_empty(),
    };
    let keep = [u.set.map(|(t, _)| t), u.remove].into_iter().flatten().collect::<Vec<_>>();
    let prune: Vec<(&String, i64)> = match u.prune {
        Some(p) => record
            .waiters
            .iter()
            .filter(|(t, w)| p.is_dead(w) && !keep.contains(&t.as_str()))
            .map(|(t, w)| (t, p.cut(w)))
            .collect(),
        None => Vec::new(),
    };
    // Removing a key that is not there is harmless once the map exists (and our base may be an
    // eventually consistent read that does not show our entry yet).
    let remove = u.remove;
    // DynamoDB refuses placeholders an expression does not use: add each where it is used.
    let mut names = Names::from([("#ws".to_string(), "Waiters".to_string())]);
    let mut values = Item::new();
    if !has_map {
        let Some((token, entry)) = u.set else {
            return Ok(None);
        };
        names.insert("#k".into(), "LockID".into());
        values.insert(":m".into(), AttributeValue::M(HashMap::from([(token.to_string(), av(entry)?)])));
        return Ok(Some(WaiterPlan {
            update: "SET #ws = :m".into(),
            condition: "attribute_exists(#k) AND attribute_not_exists(#ws)".into(),
            names,
            values,
        }));
    }
    if u.set.is_none() && remove.is_none() && prune.is_empty() {
        return Ok(None);
    }
    let mut conditions = vec!["attribute_exists(#ws)".to_string()];
    let mut removes = Vec::new();
    for (i, (token, cut)) in prune.iter().enumerate() {
        names.insert(format!("#p{i}"), token.to_string());
        removes.push(format!("#ws.#p{i}"));
        // Only if still unseen: a waiter that refreshed meanwhile stays.
        conditions.push(format!("(attribute_not_exists(#ws.#p{i}) OR #ws.#p{i}.#sa < :cut{i})"));
        values.insert(format!(":cut{i}"), AttributeValue::N(cut.to_string()));
    }
    if !prune.is_empty() {
        names.insert("#sa".into(), "SeenAt".into());
    }
    if let Some(token) = remove {
        names.insert("#me".into(), token.to_string());
        removes.push("#ws.#me".into());
    }
    let mut update = String::new();
    if let Some((token, entry)) = u.set {
        names.insert("#me".into(), token.to_string());
        values.insert(":w".into(), av(entry)?);
        update.push_str("SET #ws.#me = :w");
    }
    if !removes.is_empty() {
        update.push_str(&format!(" REMOVE {}", removes.join(", ")));
    }
    Ok(Some(WaiterPlan {
        update: update.trim().to_string(),
        condition: conditions.join(" AND "),
        names,
        values,
    }))
}

/// Waiter bookkeeping on DynamoDB (see [`WaiterUpdate`]): one UpdateItem, re-planned on the
/// item a refusal returns.
pub(super) async fn update_waiters(store: &DynamoStore, u: WaiterUpdate<'_>) -> Result<Option<Observed>> {
    let mut base = match u.base {
        Some(b) => b.clone(),
        None => store.read(u.lock, true).await?,
    };
    for _ in 0..WAITER_ROUNDS {
        let Some(plan) = waiter_plan(&u, &base)? else {
            return Ok(Some(base));
        };
        let result = store
            .client
            .update_item()
            .table_name(&store.table)
            .set_key(Some(DynamoStore::key(u.lock)))
            .update_expression(plan.update)
            .condition_expression(plan.condition)
            .set_expression_attribute_names(Some(plan.names))
            // DynamoDB refuses an empty value map (a bare REMOVE has no values).
            .set_expression_attribute_values(Some(plan.values).filter(|v| !v.is_empty()))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .return_consumed_capacity(aws_sdk_dynamodb::types::ReturnConsumedCapacity::Total)
            .send()
            .await;
        match result {
            Ok(out) => {
                store.consumed(out.consumed_capacity());
                return Ok(Some(store.parse(u.lock, out.attributes())));
            }
            Err(e) => {
                use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
                match e.as_service_error() {
                    // The map appeared or went, a pruned entry came back to life, the item
                    // was deleted: plan again on what is there now.
                    Some(UpdateItemError::ConditionalCheckFailedException(c)) => {
                        base = match c.item() {
                            Some(item) => store.parse(u.lock, Some(item)),
                            None => store.read(u.lock, true).await?,
                        };
                    }
                    _ => {
                        let err = store.error(aws::failure(e), "UpdateItem", u.lock);
                        if matches!(err, Error::Config(_)) {
                            // Bookkeeping is never worth failing the wait over.
                            tracing::warn!("queue update of {:?} refused: {err}", u.lock);
                            return Ok(None);
                        }
                        return Err(err);
                    }
                }
            }
        }
    }
    Ok(Some(base))
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::record::Record;
    use crate::store::Version;

    fn observed(waiters: &[(&str, i64)], with_map: bool) -> Observed {
        let mut r = Record::vacant("l");
        r.rvn = "v".into();
        for (t, seen) in waiters {
            r.waiters.insert(
                t.to_string(),
                crate::record::Waiter {
                    owner: t.to_string(),
                    enqueued_at: 1,
                    seen_at: *seen,
                    ordinal: None,
                    url: None,
                    window: None,
                    shared: false,
                },
            );
        }
        let mut item = serde_dynamo::to_item::<_, Item>(&r).unwrap();
        if with_map {
            item.entry("Waiters".into()).or_insert(AttributeValue::M(HashMap::new()));
        }
        Observed {
            state: State::Valid(r),
            version: Version::of(item),
        }
    }

    #[test]
    fn waiter_updates_touch_only_the_queue_map() {
        let entry = crate::record::Waiter {
            owner: "me".into(),
            enqueued_at: 5,
            seen_at: 9,
            ordinal: None,
            url: None,
            window: None,
            shared: false,
        };
        let set = WaiterUpdate {
            lock: "l",
            base: None,
            set: Some(("me", &entry)),
            remove: None,
            prune: Some(crate::queue::Prune {
                now: 100,
                window: std::time::Duration::ZERO,
            }),
        };
        // No map yet: create it whole, only if still absent.
        let plan = waiter_plan(&set, &observed(&[], false)).unwrap().unwrap();
        assert_eq!(
            (plan.update.as_str(), plan.condition.as_str()),
            ("SET #ws = :m", "attribute_exists(#k) AND attribute_not_exists(#ws)")
        );
        // An empty map left by removals counts as a map.
        assert_eq!(waiter_plan(&set, &observed(&[], true)).unwrap().unwrap().update, "SET #ws.#me = :w");
        // Stale entries go in the same request, each only if still stale.
        let plan = waiter_plan(&set, &observed(&[("old", 50), ("fresh", 150)], true)).unwrap().unwrap();
        assert_eq!(plan.update, "SET #ws.#me = :w REMOVE #ws.#p0");
        assert_eq!(plan.names["#p0"], "old");
        assert!(plan.condition.contains("#ws.#p0.#sa < :cut"), "{}", plan.condition);
        for text in [&plan.update, &plan.condition] {
            assert!(!text.contains("#r") && !text.contains("#t") && !text.contains("#o"), "{text}");
        }
        // Leaving: a bare REMOVE with no values; nothing at all without a map or a record.
        let leave = WaiterUpdate {
            lock: "l",
            base: None,
            set: None,
            remove: Some("me"),
            prune: None,
        };
        let plan = waiter_plan(&leave, &observed(&[("me", 1)], true)).unwrap().unwrap();
        assert_eq!((plan.update.as_str(), plan.values.is_empty()), ("REMOVE #ws.#me", true));
        assert!(waiter_plan(&leave, &observed(&[], false)).unwrap().is_none());
        let absent = Observed {
            state: State::Absent,
            version: Version::default(),
        };
        assert!(waiter_plan(&set, &absent).unwrap().is_none());
    }
}
