# Optional bucket for the S3 store: one JSON object per lock at
# PREFIX/NAME.lock, changed only with conditional writes (If-None-Match /
# If-Match).
resource "aws_s3_bucket" "locks" {
  #checkov:skip=CKV_AWS_144:A lock needs one authoritative copy; an asynchronous cross-region replica would hold stale locks that must never be written to. Versioning keeps earlier states for recovery.
  #checkov:skip=CKV2_AWS_62:Every acquire, renew and release rewrites a lock object; nothing consumes such events. Add notifications outside the module if something should.
  count = var.create_bucket ? 1 : 0

  bucket        = var.bucket_name
  force_destroy = var.bucket_force_destroy

  tags = var.tags

  lifecycle {
    precondition {
      condition     = var.bucket_name != null
      error_message = "bucket_name is required when create_bucket is true."
    }
  }
}

resource "aws_s3_bucket_ownership_controls" "locks" {
  count = var.create_bucket ? 1 : 0

  bucket = aws_s3_bucket.locks[0].id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "locks" {
  count = var.create_bucket ? 1 : 0

  bucket                  = aws_s3_bucket.locks[0].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "locks" {
  count = var.create_bucket ? 1 : 0

  bucket = aws_s3_bucket.locks[0].id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "locks" {
  count = var.create_bucket ? 1 : 0

  bucket = aws_s3_bucket.locks[0].id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = var.kms_key_arn == null ? "AES256" : "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = var.kms_key_arn != null
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "locks" {
  count = var.create_bucket ? 1 : 0

  bucket = aws_s3_bucket.locks[0].id

  rule {
    id     = "expire-noncurrent-lock-versions"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_retention_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }

  depends_on = [aws_s3_bucket_versioning.locks]
}

resource "aws_s3_bucket_logging" "locks" {
  count = var.create_bucket && var.bucket_logging != null ? 1 : 0

  bucket        = aws_s3_bucket.locks[0].id
  target_bucket = var.bucket_logging.target_bucket
  target_prefix = var.bucket_logging.target_prefix
}

data "aws_iam_policy_document" "bucket" {
  count = var.create_bucket ? 1 : 0

  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.locks[0].arn,
      "${aws_s3_bucket.locks[0].arn}/*",
    ]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  statement {
    sid     = "DenyOutdatedTLS"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.locks[0].arn,
      "${aws_s3_bucket.locks[0].arn}/*",
    ]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "NumericLessThan"
      variable = "s3:TlsVersion"
      values   = ["1.2"]
    }
  }
}

resource "aws_s3_bucket_policy" "locks" {
  count = var.create_bucket ? 1 : 0

  bucket = aws_s3_bucket.locks[0].id
  policy = data.aws_iam_policy_document.bucket[0].json

  depends_on = [aws_s3_bucket_public_access_block.locks]
}
