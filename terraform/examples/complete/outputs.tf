output "store_url" {
  description = "PIPELINE_LOCK_STORE for the DynamoDB store."
  value       = module.pipeline_lock.store_url
}

output "s3_store_url" {
  description = "PIPELINE_LOCK_STORE for the S3 store."
  value       = "s3://${module.pipeline_lock.bucket_name}/${module.pipeline_lock.s3_prefix}"
}

output "gitlab_role_arn" {
  description = "Put into the GitLab CI/CD variable AWS_ROLE_ARN."
  value       = module.pipeline_lock.gitlab_role_arn
}

output "github_role_arn" {
  description = "Put into the GitHub Actions variable PIPELINE_LOCK_ROLE_ARN."
  value       = module.pipeline_lock.github_role_arn
}

output "iam_policy_json" {
  description = "The lock policy, for review or to attach elsewhere."
  value       = module.pipeline_lock.iam_policy_json
}
