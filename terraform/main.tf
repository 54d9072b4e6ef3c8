data "aws_partition" "current" {}

locals {
  # Object keys are PREFIX/NAME.lock; "" means the bucket root.
  s3_prefix      = trimsuffix(var.s3_prefix, "/")
  s3_key_pattern = local.s3_prefix == "" ? "*" : "${local.s3_prefix}/*"

  table_arn  = var.create_table ? aws_dynamodb_table.locks[0].arn : null
  bucket_arn = var.create_bucket ? aws_s3_bucket.locks[0].arn : null

  store_url = (
    var.create_table ? "dynamodb://${var.table_name}" :
    var.create_bucket ? "s3://${var.bucket_name}/${local.s3_prefix}" : null
  )
}

# One item per lock, partition key LockID. The tool only does conditional
# Put/Update/DeleteItem on single items; on-demand billing fits its bursty,
# tiny traffic. ExpiresAt is a garbage-collection TTL (lease end or last
# release + retention), never read as "free" by the tool.
resource "aws_dynamodb_table" "locks" {
  count = var.create_table ? 1 : 0

  name                        = var.table_name
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "LockID"
  deletion_protection_enabled = var.deletion_protection_enabled

  attribute {
    name = "LockID"
    type = "S"
  }

  ttl {
    attribute_name = "ExpiresAt"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = var.point_in_time_recovery_enabled
  }

  # enabled = true with kms_key_arn = null uses the AWS managed key
  # (alias/aws/dynamodb); with a key ARN, that customer managed key.
  server_side_encryption {
    enabled     = true
    kms_key_arn = var.kms_key_arn
  }

  tags = var.tags
}
