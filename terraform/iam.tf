# The policy a lock user needs: exactly the calls pipeline-lock makes, on
# exactly the resources of this module.
#   DynamoDB: GetItem, PutItem, UpdateItem, DeleteItem (the lock protocol),
#             Scan (list), DescribeTable and DescribeTimeToLive (doctor).
#   S3:       GetObject, PutObject, DeleteObject under PREFIX/, and
#             ListBucket on the bucket (list, doctor).
# With a customer managed KMS key, DynamoDB and S3 use that key on the
# caller's behalf, so the caller also needs Decrypt/GenerateDataKey on it,
# limited to requests that come through those two services.
data "aws_iam_policy_document" "lock" {
  dynamic "statement" {
    for_each = var.create_table ? [local.table_arn] : []

    content {
      sid = "PipelineLockDynamoDB"
      actions = [
        "dynamodb:DeleteItem",
        "dynamodb:DescribeTable",
        "dynamodb:DescribeTimeToLive",
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:Scan",
        "dynamodb:UpdateItem",
      ]
      resources = [statement.value]
    }
  }

  dynamic "statement" {
    for_each = var.create_bucket ? [local.bucket_arn] : []

    content {
      sid = "PipelineLockS3Objects"
      actions = [
        "s3:DeleteObject",
        "s3:GetObject",
        "s3:PutObject",
      ]
      resources = ["${statement.value}/${local.s3_key_pattern}"]
    }
  }

  dynamic "statement" {
    for_each = var.create_bucket ? [local.bucket_arn] : []

    content {
      sid       = "PipelineLockS3List"
      actions   = ["s3:ListBucket"]
      resources = [statement.value]
    }
  }

  dynamic "statement" {
    for_each = var.kms_key_arn != null && (var.create_table || var.create_bucket) ? [var.kms_key_arn] : []

    content {
      sid = "PipelineLockKmsViaStore"
      actions = [
        "kms:Decrypt",
        "kms:GenerateDataKey",
      ]
      resources = [statement.value]

      condition {
        test     = "StringLike"
        variable = "kms:ViaService"
        values = concat(
          var.create_table ? ["dynamodb.*.amazonaws.com"] : [],
          var.create_bucket ? ["s3.*.amazonaws.com"] : [],
        )
      }
    }
  }
}

resource "aws_iam_policy" "lock" {
  count = var.create_iam_policy && (var.create_table || var.create_bucket) ? 1 : 0

  name        = "${var.name_prefix}-store"
  path        = var.iam_path
  description = "pipeline-lock: read and conditionally write the lock store"
  policy      = data.aws_iam_policy_document.lock.json

  tags = var.tags
}
