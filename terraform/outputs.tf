output "table_name" {
  description = "Name of the DynamoDB lock table (null when create_table is false)."
  value       = var.create_table ? aws_dynamodb_table.locks[0].name : null
}

output "table_arn" {
  description = "ARN of the DynamoDB lock table (null when create_table is false)."
  value       = local.table_arn
}

output "bucket_name" {
  description = "Name of the S3 lock bucket (null when create_bucket is false)."
  value       = var.create_bucket ? aws_s3_bucket.locks[0].id : null
}

output "bucket_arn" {
  description = "ARN of the S3 lock bucket (null when create_bucket is false)."
  value       = local.bucket_arn
}

output "s3_prefix" {
  description = "Key prefix of the lock objects in the bucket (pass as --prefix / PIPELINE_LOCK_PREFIX)."
  value       = var.create_bucket ? local.s3_prefix : null
}

output "store_url" {
  description = "Value for --store / PIPELINE_LOCK_STORE: the table when one is created, else the bucket and prefix."
  value       = local.store_url
}

output "iam_policy_json" {
  description = "IAM policy document (JSON) with exactly the actions pipeline-lock calls, on exactly this module's table, bucket and prefix."
  value       = data.aws_iam_policy_document.lock.json
}

output "iam_policy_arn" {
  description = "ARN of the managed policy made from iam_policy_json (null when create_iam_policy is false)."
  value       = length(aws_iam_policy.lock) > 0 ? aws_iam_policy.lock[0].arn : null
}

output "gitlab_role_arn" {
  description = "ARN of the role for GitLab CI jobs (the CI/CD variable AWS_ROLE_ARN; the job needs an ID token whose aud is gitlab_audience)."
  value       = var.create_gitlab_role ? aws_iam_role.gitlab[0].arn : null
}

output "gitlab_oidc_provider_arn" {
  description = "ARN of the GitLab OIDC provider the role trusts (created or given)."
  value       = local.gitlab_provider_arn
}

output "github_role_arn" {
  description = "ARN of the role for GitHub Actions (role-to-assume of aws-actions/configure-aws-credentials)."
  value       = var.create_github_role ? aws_iam_role.github[0].arn : null
}

output "github_oidc_provider_arn" {
  description = "ARN of the GitHub OIDC provider the role trusts (created or given)."
  value       = local.github_provider_arn
}
