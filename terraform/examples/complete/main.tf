# Everything the module can create: the DynamoDB table, an S3 bucket for the
# S3 store, a customer managed KMS key for both, and OIDC roles for GitLab and
# GitHub. Copy it, change the defaults in variables.tf, and apply.

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      ManagedBy = "terraform"
      Component = "pipeline-lock"
    }
  }
}

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

# Key policy: the account root manages the key and delegates use to IAM
# policies (the module's lock policy grants use through DynamoDB and S3 only).
data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109:A KMS key policy's Resource "*" means this key only; administration stays with the account root as AWS's default key policy does.
  #checkov:skip=CKV_AWS_111:A KMS key policy's Resource "*" means this key only; write access is the account root's, which IAM policies then narrow.
  #checkov:skip=CKV_AWS_356:A KMS key policy's Resource "*" means this key only, so it cannot be narrowed further.
  statement {
    sid       = "AccountRootManagesKey"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
}

resource "aws_kms_key" "locks" {
  description             = "pipeline-lock table and bucket"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "locks" {
  name          = "alias/pipeline-lock"
  target_key_id = aws_kms_key.locks.key_id
}

module "pipeline_lock" {
  source = "../.."

  table_name  = "pipeline-locks"
  kms_key_arn = aws_kms_key.locks.arn

  create_bucket = true
  bucket_name   = var.bucket_name
  s3_prefix     = "locks"
  bucket_logging = {
    target_bucket = var.access_log_bucket
    target_prefix = "pipeline-lock/"
  }

  create_gitlab_role = true
  gitlab_projects    = var.gitlab_projects
  gitlab_branches    = ["main", "release/*"]

  create_github_role  = true
  github_repositories = var.github_repositories
  github_branches     = ["main"]
  github_environments = ["production"]

  tags = {
    Team = "platform"
  }
}
