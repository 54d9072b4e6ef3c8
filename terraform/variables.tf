# ---------------------------------------------------------------------------
# Lock store: DynamoDB table
# ---------------------------------------------------------------------------

variable "create_table" {
  description = "Create the DynamoDB lock table (store URL dynamodb://TABLE)."
  type        = bool
  default     = true
}

variable "table_name" {
  description = "Name of the DynamoDB lock table. pipeline-lock uses `pipeline-locks` when no store is given."
  type        = string
  default     = "pipeline-locks"

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]{3,255}$", var.table_name))
    error_message = "table_name must be 3-255 characters of A-Z, a-z, 0-9, '_', '-' and '.'."
  }
}

variable "deletion_protection_enabled" {
  description = "Turn on DynamoDB deletion protection for the table. Set to false (and apply) before destroying it."
  type        = bool
  default     = true
}

variable "point_in_time_recovery_enabled" {
  description = "Turn on DynamoDB point-in-time recovery (continuous backups) for the table."
  type        = bool
  default     = true
}

variable "kms_key_arn" {
  description = "ARN of a customer managed KMS key used to encrypt the table and the bucket. null: the table uses the AWS managed key for DynamoDB and the bucket SSE-S3. When set, the IAM policy also allows kms:Decrypt and kms:GenerateDataKey on this key, through DynamoDB and S3 only."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:(key|alias)/.+$", var.kms_key_arn))
    error_message = "kms_key_arn must be null or a KMS key ARN (arn:PARTITION:kms:REGION:ACCOUNT:key/ID)."
  }
}

# ---------------------------------------------------------------------------
# Lock store: S3 bucket (optional)
# ---------------------------------------------------------------------------

variable "create_bucket" {
  description = "Also create an S3 bucket for the S3 store (store URL s3://BUCKET/PREFIX)."
  type        = bool
  default     = false
}

variable "bucket_name" {
  description = "Name of the S3 bucket for lock objects. Required when create_bucket is true."
  type        = string
  default     = null

  validation {
    condition     = var.bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be a valid S3 bucket name: 3-63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit."
  }
}

variable "s3_prefix" {
  description = "Key prefix under which pipeline-lock keeps its lock objects (PREFIX/NAME.lock). The IAM policy grants object access under this prefix only."
  type        = string
  default     = "pipeline-lock"

  validation {
    condition     = !startswith(var.s3_prefix, "/") && !strcontains(var.s3_prefix, "*") && !strcontains(var.s3_prefix, "?")
    error_message = "s3_prefix must not start with '/' nor contain '*' or '?'."
  }
}

variable "bucket_force_destroy" {
  description = "Allow terraform destroy to delete the bucket together with its lock objects and their versions."
  type        = bool
  default     = false
}

variable "noncurrent_version_retention_days" {
  description = "Days after which noncurrent versions of lock objects are deleted. Every lock write creates a version; they are only kept for recovery."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_retention_days >= 1
    error_message = "noncurrent_version_retention_days must be at least 1."
  }
}

variable "bucket_logging" {
  description = "Server access logging for the bucket: the target bucket (which must already accept logs) and a key prefix. null: no access logging."
  type = object({
    target_bucket = string
    target_prefix = optional(string, "pipeline-lock/")
  })
  default = null
}

# ---------------------------------------------------------------------------
# IAM
# ---------------------------------------------------------------------------

variable "create_iam_policy" {
  description = "Create a managed IAM policy from the iam_policy_json output. Needed for the OIDC roles."
  type        = bool
  default     = true
}

variable "name_prefix" {
  description = "Prefix for the names of the IAM policy and roles."
  type        = string
  default     = "pipeline-lock"

  validation {
    condition     = can(regex("^[A-Za-z0-9+=,.@_-]{1,40}$", var.name_prefix))
    error_message = "name_prefix must be 1-40 characters valid in IAM names."
  }
}

variable "iam_path" {
  description = "Path for the IAM policy and roles."
  type        = string
  default     = "/"

  validation {
    condition     = can(regex("^/([A-Za-z0-9+=,.@_-]+/)*$", var.iam_path))
    error_message = "iam_path must begin and end with '/'."
  }
}

variable "role_permissions_boundary" {
  description = "ARN of a permissions boundary policy for the OIDC roles, or null."
  type        = string
  default     = null
}

variable "role_max_session_duration" {
  description = "Maximum session length of the OIDC roles, in seconds (3600-43200). A lock job's session only has to last as long as that job."
  type        = number
  default     = 3600

  validation {
    condition     = var.role_max_session_duration >= 3600 && var.role_max_session_duration <= 43200
    error_message = "role_max_session_duration must be between 3600 and 43200 seconds."
  }
}

# ---------------------------------------------------------------------------
# GitLab OIDC role (optional)
# ---------------------------------------------------------------------------

variable "create_gitlab_role" {
  description = "Create an IAM role that GitLab CI jobs of gitlab_projects on gitlab_branches assume with their ID token (AssumeRoleWithWebIdentity)."
  type        = bool
  default     = false
}

variable "gitlab_url" {
  description = "URL of the GitLab instance that issues the ID tokens (the `iss` claim), without a trailing slash."
  type        = string
  default     = "https://gitlab.com"

  validation {
    condition     = can(regex("^https://[^/]+(/.*[^/])?$", var.gitlab_url))
    error_message = "gitlab_url must start with https:// and must not end with '/'."
  }
}

variable "gitlab_audience" {
  description = "Audience (`aud`) the GitLab jobs put in their ID token (`id_tokens: ...: aud:`). null: gitlab_url."
  type        = string
  default     = null
}

variable "gitlab_oidc_provider_arn" {
  description = "ARN of an existing IAM OIDC provider for gitlab_url. null: the module creates one (an account holds only one provider per URL)."
  type        = string
  default     = null
}

variable "gitlab_oidc_thumbprints" {
  description = "Legacy certificate thumbprints for a created GitLab OIDC provider. null: none (IAM verifies the issuer with its trusted CAs)."
  type        = list(string)
  default     = null
}

variable "gitlab_projects" {
  description = "Full paths of the GitLab projects (GROUP/SUBGROUP/PROJECT) whose pipelines may assume the role. No wildcards."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for p in var.gitlab_projects : can(regex("^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+$", p))])
    error_message = "gitlab_projects entries must be full project paths such as group/project, without wildcards."
  }
}

variable "gitlab_branches" {
  description = "Branches whose pipelines may assume the GitLab role. IAM StringLike patterns ('release/*' is allowed)."
  type        = list(string)
  default     = ["main"]

  validation {
    condition     = length(var.gitlab_branches) > 0 && alltrue([for b in var.gitlab_branches : length(b) > 0 && b != "*"])
    error_message = "gitlab_branches must name at least one branch and must not be the bare wildcard '*'."
  }
}

variable "gitlab_role_name" {
  description = "Name of the GitLab role. null: \"<name_prefix>-gitlab\"."
  type        = string
  default     = null
}

# ---------------------------------------------------------------------------
# GitHub OIDC role (optional)
# ---------------------------------------------------------------------------

variable "create_github_role" {
  description = "Create an IAM role that GitHub Actions workflows of github_repositories on github_branches (or github_environments) assume with their OIDC token."
  type        = bool
  default     = false
}

variable "github_oidc_provider_arn" {
  description = "ARN of the existing IAM OIDC provider for token.actions.githubusercontent.com. null: the module creates one."
  type        = string
  default     = null
}

variable "github_oidc_thumbprints" {
  description = "Legacy certificate thumbprints for a created GitHub OIDC provider. null: none (IAM verifies the issuer with its trusted CAs)."
  type        = list(string)
  default     = null
}

variable "github_repositories" {
  description = "Repositories (OWNER/REPO) whose workflows may assume the role. No wildcards."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for r in var.github_repositories : can(regex("^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", r))])
    error_message = "github_repositories entries must be OWNER/REPO, without wildcards."
  }
}

variable "github_branches" {
  description = "Branches whose workflow runs may assume the GitHub role (IAM StringLike patterns; 'release/*' is allowed)."
  type        = list(string)
  default     = ["main"]

  validation {
    condition     = alltrue([for b in var.github_branches : length(b) > 0 && b != "*"])
    error_message = "github_branches entries must be non-empty and not the bare wildcard '*'."
  }
}

variable "github_environments" {
  description = "GitHub deployment environments whose jobs may assume the role. A job with `environment:` gets the subject repo:OWNER/REPO:environment:NAME instead of the branch subject."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for e in var.github_environments : length(e) > 0 && e != "*"])
    error_message = "github_environments entries must be non-empty and not the bare wildcard '*'."
  }
}

variable "github_role_name" {
  description = "Name of the GitHub role. null: \"<name_prefix>-github\"."
  type        = string
  default     = null
}

# ---------------------------------------------------------------------------

variable "tags" {
  description = "Tags for every resource the module creates."
  type        = map(string)
  default     = {}
}
