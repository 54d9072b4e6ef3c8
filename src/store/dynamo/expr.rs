//! The UpdateItem expressions of holder-side writes: what a change sets and removes, and the
//! condition each `Expect` becomes (docs/design.md, rules 2 to 5).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use super::Item;
use crate::error::{Error, Result};
use crate::record::{Action, Record, SharedOp};
use crate::store::{Expect, State, Write};

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
    ("#sl", "Slots"),
    ("#sh", "Shared"),
];

/// The `ExpressionAttributeNames` for the placeholders used (DynamoDB refuses unused ones).
pub(super) fn names(used: &[&str]) -> Names {
    NAMES
        .iter()
        .filter(|(p, _)| used.contains(p))
        .map(|(p, n)| (p.to_string(), n.to_string()))
        .collect()
}

/// `ExpressionAttributeNames`: placeholder to attribute name.
pub(super) type Names = HashMap<String, String>;

/// Placeholders that occur in `expr` as whole tokens (`#h` is not `#hi`).
pub(super) fn used_names(expr: &str) -> Vec<&'static str> {
    let tokens: Vec<&str> = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '#')).collect();
    NAMES.iter().map(|(p, _)| *p).filter(|p| tokens.contains(p)).collect()
}

pub(super) fn av<T: serde::Serialize>(value: &T) -> Result<AttributeValue> {
    serde_dynamo::to_attribute_value(value).map_err(|e| Error::other("cannot encode a lock attribute", e))
}

/// The update expression, values and the placeholders of queue keys for a change. With
/// `dequeue`, a grant also removes the queue entries it names (they were in the map it read).
pub(super) fn update_for(w: &Write<'_>, dequeue: bool) -> Result<(String, Item, Names)> {
    if let Action::Shared(op) = &w.change.action {
        return shared_update(w, op, dequeue);
    }
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
    let mut keys = Names::new();
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
            dequeue_into(&g.dequeue, dequeue, &mut remove, &mut keys);
            if c.slots > 1 {
                set.push("#sl = :sl".into());
                values.insert(":sl".into(), AttributeValue::N(c.slots.to_string()));
            }
            if c.evict {
                // Every shared hold was judged stale; the condition pins the version read.
                remove.push("#sh".into());
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
        Action::Release => {
            remove.extend(["#o", "#t", "#a", "#rn", "#h"].map(String::from));
            if c.evict {
                remove.push("#sh".into());
            }
        }
        Action::Shared(_) => unreachable!("shared writes are planned by shared_update"),
    }
    finish(set, remove, values, keys, c)
}

/// The update expression from its SET and REMOVE parts, with the History event appended.
fn finish(mut set: Vec<String>, remove: Vec<String>, mut values: Item, keys: Names, c: &crate::record::Change) -> Result<(String, Item, Names)> {
    let events: Vec<AttributeValue> = c.evicted.iter().chain(&c.event).map(av).collect::<Result<_>>()?;
    if !events.is_empty() {
        set.push("#hi = list_append(if_not_exists(#hi, :empty), :ev)".into());
        values.insert(":empty".into(), AttributeValue::L(vec![]));
        values.insert(":ev".into(), AttributeValue::L(events));
    }
    let mut expr = format!("SET {}", set.join(", "));
    if !remove.is_empty() {
        expr.push_str(&format!(" REMOVE {}", remove.join(", ")));
    }
    Ok((expr, values, keys))
}

/// Removes the queue entries a grant names (they were in the map it read). Removing map keys
/// leaves Rvn and the holder fields alone; no path overlaps them.
fn dequeue_into(tokens: &[String], dequeue: bool, remove: &mut Vec<String>, keys: &mut Names) {
    for (i, token) in tokens.iter().enumerate().filter(|_| dequeue) {
        remove.push(format!("#ws.#q{i}"));
        keys.insert(format!("#q{i}"), token.clone());
        keys.insert("#ws".into(), "Waiters".into());
    }
}

/// A write to a shared hold: the next record computed from the one read (or the one created
/// from absent), written as its holder-side attributes under the condition on the version
/// read, so the fence and the slot map are exactly what that record gives. Waiters and the
/// attributes of no holder are left alone.
fn shared_update(w: &Write<'_>, op: &SharedOp, dequeue: bool) -> Result<(String, Item, Names)> {
    let c = w.change;
    let next = match w.base.map(|b| &b.state) {
        Some(State::Valid(r)) => r.apply(c),
        _ => Record::created(w.lock, c),
    };
    let mut set = vec!["#r = :r".to_string(), "#f = :f".to_string()];
    let mut remove = Vec::new();
    let mut values: Item = HashMap::from([
        (":r".to_string(), AttributeValue::S(c.rvn.clone())),
        (":f".to_string(), AttributeValue::N(next.fence.to_string())),
    ]);
    if next.shared.is_empty() {
        remove.push("#sh".to_string());
    } else {
        set.push("#sh = :sh".into());
        values.insert(":sh".into(), av(&next.shared)?);
    }
    match next.expires_at {
        Some(e) => {
            set.push("#e = :e".into());
            values.insert(":e".into(), AttributeValue::N(e.to_string()));
        }
        None => remove.push("#e".into()),
    }
    if let Some(n) = next.slots {
        set.push("#sl = :sl".into());
        values.insert(":sl".into(), AttributeValue::N(n.to_string()));
    }
    if c.evict {
        remove.extend(["#o", "#t", "#a", "#rn", "#h", "#l"].map(String::from));
    }
    let mut keys = Names::new();
    if let SharedOp::Grant { grantee, .. } = op {
        dequeue_into(&grantee.dequeue, dequeue, &mut remove, &mut keys);
    }
    finish(set, remove, values, keys, c)
}

/// What a read checks before it calls an item a valid record, as far as a condition can say
/// it (docs/design.md, rule 8): a Fence that is a number not below zero, an Rvn that is a
/// string, a History that is a list if any. The server evaluates the condition, not our parser,
/// so without this an Owner or Token condition would hold on an item that reads as corrupt
/// (`Expect::holds` never does) and a holder write would land on it without break-glass.
/// Damage deeper than types (a History entry of the wrong shape, a fractional Fence) only
/// shows when the record is read back after the write.
pub(super) const WELL_FORMED: &str =
    "attribute_type(#f, :tn) AND #f >= :zero AND attribute_type(#r, :ts) AND (attribute_not_exists(#hi) OR attribute_type(#hi, :tl))";

/// A held record carries an Owner, its Token and its times (`Record::validate`).
pub(super) const HELD: &str = "attribute_type(#o, :ts) AND attribute_type(#t, :ts) AND attribute_type(#a, :tn) AND attribute_type(#rn, :tn)";

/// The condition for a write (docs/design.md, rules 2, 4, 5); `None` for `Expect::Exact`,
/// which is written whole with PutItem (see `put_exact`). Every other condition also requires
/// an item that parses as far as types go ([`WELL_FORMED`]).
pub(super) fn condition_for(w: &Write<'_>, values: &mut Item) -> Option<String> {
    let (expect, blind) = (&w.expect, w.is_blind_grant());
    if matches!(w.change.action, Action::Shared(_)) && *expect == Expect::Vacant {
        // A shared write from absent: its fence and slot map follow from no record at all.
        return Some("attribute_not_exists(#k)".into());
    }
    // A grant needs the lock's N to be the one it assumes (as `Write::admits` says for the
    // whole-record stores); a grant from free also needs no shared hold.
    let grant = matches!(w.change.action, Action::Grant(_) | Action::Shared(SharedOp::Grant { .. }));
    let slots = match w.change.slots {
        _ if !grant && *expect != Expect::Vacant => String::new(),
        1 => "attribute_not_exists(#sl)".to_string(),
        n => {
            values.insert(":nsl".into(), AttributeValue::N(n.to_string()));
            "#sl = :nsl".to_string()
        }
    };
    let n_of_grant = if grant { format!(" AND {slots}") } else { String::new() };
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
            format!(
                "attribute_not_exists(#k) OR (attribute_not_exists(#o) AND attribute_not_exists(#t) AND attribute_not_exists(#sh) \
                 AND {slots} AND {WELL_FORMED}{queue})"
            )
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
            format!("#t = :et AND #r = :er AND {HELD} AND {WELL_FORMED}{n_of_grant}")
        }
        // Held or free, but one or the other: a Token without an Owner is corrupt.
        Expect::Rvn(rvn) => {
            s(":er", rvn);
            format!("#r = :er AND ((attribute_not_exists(#o) AND attribute_not_exists(#t)) OR ({HELD})) AND {WELL_FORMED}{n_of_grant}")
        }
        Expect::Exact => return None,
    };
    values.insert(":zero".into(), AttributeValue::N("0".into()));
    Some(condition)
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
                waited: None,
            }),
            slots: 1,
            evict: false,
            evicted: Vec::new(),
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

    /// A release at store ms 5 (N = 1), with `expires_at`.
    fn release(expires_at: Option<i64>) -> Change {
        Change {
            action: Action::Release,
            rvn: "r".into(),
            now: 5,
            lease_expires_at: None,
            expires_at,
            fence_floor: 5,
            event: None,
            slots: 1,
            evict: false,
            evicted: Vec::new(),
        }
    }

    #[test]
    fn a_blind_grant_needs_an_empty_queue_and_the_n_it_assumes() {
        let change = release(None);
        let blind = Write {
            lock: "l",
            expect: Expect::Vacant,
            base: None,
            change: &change,
        };
        let read = crate::store::Observed {
            state: State::Absent,
            version: Default::default(),
        };
        let seen = Write {
            base: Some(&read),
            ..blind.clone()
        };
        let condition = condition_for(&blind, &mut Item::new()).unwrap();
        assert!(
            condition.contains("size(#ws) = :zero") && condition.contains("attribute_not_exists(#sl)"),
            "{condition}"
        );
        assert!(!condition_for(&seen, &mut Item::new()).unwrap().contains("#ws"));
        let pool = Change { slots: 3, ..change.clone() };
        let mut values = Item::new();
        let condition = condition_for(&Write { change: &pool, ..blind }, &mut values).unwrap();
        assert!(
            condition.contains("#sl = :nsl") && condition.contains("attribute_not_exists(#sh)"),
            "{condition}"
        );
        assert_eq!(values[":nsl"], AttributeValue::N("3".into()));
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
        let change = release(None);
        for expect in holder.iter().chain(&[Expect::Vacant, Expect::Rvn("r".into())]) {
            let mut values = Item::new();
            let w = Write {
                lock: "l",
                expect: expect.clone(),
                base: None,
                change: &change,
            };
            let condition = condition_for(&w, &mut values).unwrap();
            assert!(condition.contains(WELL_FORMED), "{expect:?}: {condition}");
            assert_eq!(condition.contains(HELD), !matches!(expect, Expect::Vacant), "{expect:?}: {condition}");
            for v in [":tn", ":ts", ":tl", ":zero"] {
                assert!(values.contains_key(v), "{expect:?}: {v}");
            }
        }
        let exact = Write {
            lock: "l",
            expect: Expect::Exact,
            base: None,
            change: &change,
        };
        assert!(condition_for(&exact, &mut Item::new()).is_none());
    }

    #[test]
    fn release_removes_holder_fields_and_keeps_the_fence() {
        let change = release(Some(9));
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
