variable "region" {
  description = "AWS region for the lock table and bucket."
  type        = string
  default     = "eu-central-1"
}

variable "bucket_name" {
  description = "Globally unique name for the S3 lock bucket."
  type        = string
  default     = "example-pipeline-lock-bucket"
}

variable "access_log_bucket" {
  description = "Existing bucket that receives S3 server access logs for the lock bucket."
  type        = string
  default     = "example-access-logs"
}

variable "gitlab_projects" {
  description = "GitLab projects (GROUP/PROJECT) whose pipelines may take locks."
  type        = list(string)
  default     = ["platform/deployments"]
}

variable "github_repositories" {
  description = "GitHub repositories (OWNER/REPO) whose workflows may take locks."
  type        = list(string)
  default     = ["example-org/deployments"]
}
