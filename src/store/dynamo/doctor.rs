//! `doctor` for a DynamoDB table: the checks an operator wants before pipelines rely on it.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, KeyType, ScalarAttributeType, TimeToLiveStatus};

use super::DynamoStore;
use crate::store::aws::failure;
use crate::store::{Check, Outcome, Store};

const SCRATCH_PREFIX: &str = "pipeline-lock-doctor/";

pub(super) async fn run(store: &DynamoStore) -> Vec<Check> {
    let mut checks = Vec::new();
    let table = store.table.clone();
    let client = &store.client;

    match client.describe_table().table_name(&table).send().await {
        Ok(out) => {
            let t = out.table();
            let status = t.and_then(|t| t.table_status()).map(|s| s.as_str().to_string()).unwrap_or_default();
            checks.push(Check::new("table exists", Outcome::Pass, format!("{table} ({status})")));
            let keys: Vec<_> = t.map(|t| t.key_schema().to_vec()).unwrap_or_default();
            let types: HashMap<_, _> = t
                .map(|t| {
                    t.attribute_definitions()
                        .iter()
                        .map(|a| (a.attribute_name().to_string(), a.attribute_type().clone()))
                        .collect()
                })
                .unwrap_or_default();
            let ok = keys.len() == 1
                && keys[0].attribute_name() == "LockID"
                && keys[0].key_type() == &KeyType::Hash
                && types.get("LockID") == Some(&ScalarAttributeType::S);
            let found: Vec<String> = keys.iter().map(|k| format!("{} {}", k.attribute_name(), k.key_type().as_str())).collect();
            checks.push(if ok {
                Check::new("key schema", Outcome::Pass, "LockID (S) partition key, no sort key")
            } else {
                Check::new(
                    "key schema",
                    Outcome::Fail,
                    format!(
                        "found [{}]; the table needs LockID (String) as its only key: recreate it with the Terraform module",
                        found.join(", ")
                    ),
                )
            });
        }
        Err(e) => {
            let err = store.error(failure(e), "DescribeTable", "-");
            checks.push(Check::new("table exists", Outcome::Fail, err.to_string()));
            return checks;
        }
    }

    checks.push(match client.describe_time_to_live().table_name(&table).send().await {
        Ok(out) => {
            let d = out.time_to_live_description();
            let on = d.and_then(|d| d.time_to_live_status()) == Some(&TimeToLiveStatus::Enabled)
                && d.and_then(|d| d.attribute_name()) == Some("ExpiresAt");
            if on {
                Check::new("TTL on ExpiresAt", Outcome::Pass, "enabled")
            } else {
                Check::new(
                    "TTL on ExpiresAt",
                    Outcome::Warn,
                    format!(
                        "not enabled: old tombstones are never deleted (harmless, they cost storage). Fix: aws dynamodb \
                     update-time-to-live --table-name {table} --time-to-live-specification Enabled=true,AttributeName=ExpiresAt"
                    ),
                )
            }
        }
        Err(e) => Check::new(
            "TTL on ExpiresAt",
            Outcome::Warn,
            store.error(failure(e), "DescribeTimeToLive", "-").to_string(),
        ),
    });

    checks.extend(conditional_writes(store).await);
    checks
}

/// Writes a scratch item, proves that conditions are enforced, and deletes it again. One long
/// function on purpose: the steps run in order on one item, each stopping the rest when it
/// fails, and read top to bottom as the operator's checklist.
async fn conditional_writes(store: &DynamoStore) -> Vec<Check> {
    let client = &store.client;
    let table = &store.table;
    let key = format!("{SCRATCH_PREFIX}{:016x}", rand::random::<u64>());
    let item = |rvn: &str| {
        HashMap::from([
            ("LockID".to_string(), AttributeValue::S(key.clone())),
            ("Rvn".to_string(), AttributeValue::S(rvn.to_string())),
            ("Fence".to_string(), AttributeValue::N("0".into())),
            (
                "ExpiresAt".to_string(),
                AttributeValue::N(((store.clock().now_ms() / 1000) + 3600).to_string()),
            ),
        ])
    };
    let key_map = HashMap::from([("LockID".to_string(), AttributeValue::S(key.clone()))]);
    let mut checks = Vec::new();
    let put = |rvn: &str| {
        client
            .put_item()
            .table_name(table)
            .set_item(Some(item(rvn)))
            .condition_expression("attribute_not_exists(LockID)")
            .send()
    };

    if let Err(e) = put("a").await {
        checks.push(Check::new(
            "permission PutItem",
            Outcome::Fail,
            store.error(failure(e), "PutItem", &key).to_string(),
        ));
        return checks;
    }
    checks.push(Check::new("permission PutItem", Outcome::Pass, format!("created scratch item {key}")));

    let second = put("b").await;
    let refused = matches!(
        second
            .as_ref()
            .map_err(|e| e.as_service_error().map(|s| s.is_conditional_check_failed_exception())),
        Err(Some(true))
    );
    checks.push(if refused {
        Check::new("create-only write refused when the item exists", Outcome::Pass, "ConditionalCheckFailed")
    } else {
        Check::new(
            "create-only write refused when the item exists",
            Outcome::Fail,
            format!("the store accepted a second create-only write ({second:?}): it does not honour conditions, and a lock on it is no lock"),
        )
    });

    let update = client
        .update_item()
        .table_name(table)
        .set_key(Some(key_map.clone()))
        .update_expression("SET Fence = :one")
        .condition_expression("Rvn = :wrong")
        .expression_attribute_values(":one", AttributeValue::N("1".into()))
        .expression_attribute_values(":wrong", AttributeValue::S("not-the-version".into()))
        .return_values_on_condition_check_failure(aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure::AllOld)
        .send()
        .await;
    checks.push(match update {
        Err(e) => match e.as_service_error() {
            Some(aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c)) => {
                let detail = if c.item().is_some() {
                    "refused, old item returned (ALL_OLD)"
                } else {
                    "refused; no ALL_OLD item (pipeline-lock reads instead)"
                };
                Check::new("update with a wrong version refused", Outcome::Pass, detail)
            }
            _ => Check::new(
                "permission UpdateItem",
                Outcome::Fail,
                store.error(failure(e), "UpdateItem", &key).to_string(),
            ),
        },
        Ok(_) => Check::new(
            "update with a wrong version refused",
            Outcome::Fail,
            "the store accepted an update whose condition was false: a lock on it is no lock",
        ),
    });

    checks.push(
        match client
            .get_item()
            .table_name(table)
            .set_key(Some(key_map.clone()))
            .consistent_read(true)
            .send()
            .await
        {
            Ok(out) if out.item().is_some() => Check::new("permission GetItem", Outcome::Pass, "read the scratch item back"),
            Ok(_) => Check::new("permission GetItem", Outcome::Fail, "the scratch item just written reads as absent"),
            Err(e) => Check::new("permission GetItem", Outcome::Fail, store.error(failure(e), "GetItem", &key).to_string()),
        },
    );

    let rvn = if refused { "a" } else { "b" };
    checks.push(
        match client
            .delete_item()
            .table_name(table)
            .set_key(Some(key_map))
            .condition_expression("Rvn = :r")
            .expression_attribute_values(":r", AttributeValue::S(rvn.into()))
            .send()
            .await
        {
            Ok(_) => Check::new("permission DeleteItem", Outcome::Pass, "scratch item removed"),
            Err(e) => Check::new(
                "permission DeleteItem",
                Outcome::Fail,
                format!(
                    "{} (scratch item {key} left behind; TTL removes it within a day when TTL is on)",
                    store.error(failure(e), "DeleteItem", &key)
                ),
            ),
        },
    );
    checks
}
