# Optional roles that CI jobs assume with their OIDC ID token, so that no
# long-lived AWS keys are stored in CI settings. Each role carries only the
# lock policy above, and trusts only the listed projects/repositories on the
# listed branches.

locals {
  gitlab_host     = trimprefix(var.gitlab_url, "https://")
  gitlab_audience = coalesce(var.gitlab_audience, var.gitlab_url)
  gitlab_subjects = [
    for pair in setproduct(var.gitlab_projects, var.gitlab_branches) :
    "project_path:${pair[0]}:ref_type:branch:ref:${pair[1]}"
  ]
  gitlab_provider_arn = (
    !var.create_gitlab_role ? null :
    var.gitlab_oidc_provider_arn != null ? var.gitlab_oidc_provider_arn :
    aws_iam_openid_connect_provider.gitlab[0].arn
  )

  github_host     = "token.actions.githubusercontent.com"
  github_audience = "sts.amazonaws.com"
  github_subjects = concat(
    [for pair in setproduct(var.github_repositories, var.github_branches) : "repo:${pair[0]}:ref:refs/heads/${pair[1]}"],
    [for pair in setproduct(var.github_repositories, var.github_environments) : "repo:${pair[0]}:environment:${pair[1]}"],
  )
  github_provider_arn = (
    !var.create_github_role ? null :
    var.github_oidc_provider_arn != null ? var.github_oidc_provider_arn :
    aws_iam_openid_connect_provider.github[0].arn
  )
}

# --- GitLab -----------------------------------------------------------------

resource "aws_iam_openid_connect_provider" "gitlab" {
  count = var.create_gitlab_role && var.gitlab_oidc_provider_arn == null ? 1 : 0

  url             = var.gitlab_url
  client_id_list  = [local.gitlab_audience]
  thumbprint_list = var.gitlab_oidc_thumbprints

  tags = var.tags
}

data "aws_iam_policy_document" "gitlab_trust" {
  count = var.create_gitlab_role ? 1 : 0

  statement {
    sid     = "GitLabOidc"
    effect  = "Allow"
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [local.gitlab_provider_arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.gitlab_host}:aud"
      values   = [local.gitlab_audience]
    }

    condition {
      test     = "StringLike"
      variable = "${local.gitlab_host}:sub"
      values   = local.gitlab_subjects
    }
  }
}

resource "aws_iam_role" "gitlab" {
  count = var.create_gitlab_role ? 1 : 0

  name                 = coalesce(var.gitlab_role_name, "${var.name_prefix}-gitlab")
  path                 = var.iam_path
  description          = "pipeline-lock: assumed by GitLab CI jobs of ${join(", ", var.gitlab_projects)}"
  assume_role_policy   = data.aws_iam_policy_document.gitlab_trust[0].json
  max_session_duration = var.role_max_session_duration
  permissions_boundary = var.role_permissions_boundary

  tags = var.tags

  lifecycle {
    precondition {
      condition     = length(var.gitlab_projects) > 0
      error_message = "create_gitlab_role needs at least one entry in gitlab_projects."
    }
    precondition {
      condition     = var.create_iam_policy && (var.create_table || var.create_bucket)
      error_message = "create_gitlab_role needs create_iam_policy and a table or bucket."
    }
  }
}

resource "aws_iam_role_policy_attachment" "gitlab" {
  count = var.create_gitlab_role ? 1 : 0

  role       = aws_iam_role.gitlab[0].name
  policy_arn = aws_iam_policy.lock[0].arn
}

# --- GitHub -----------------------------------------------------------------

resource "aws_iam_openid_connect_provider" "github" {
  count = var.create_github_role && var.github_oidc_provider_arn == null ? 1 : 0

  url             = "https://${local.github_host}"
  client_id_list  = [local.github_audience]
  thumbprint_list = var.github_oidc_thumbprints

  tags = var.tags
}

data "aws_iam_policy_document" "github_trust" {
  count = var.create_github_role ? 1 : 0

  statement {
    sid     = "GitHubOidc"
    effect  = "Allow"
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [local.github_provider_arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.github_host}:aud"
      values   = [local.github_audience]
    }

    condition {
      test     = "StringLike"
      variable = "${local.github_host}:sub"
      values   = local.github_subjects
    }
  }
}

resource "aws_iam_role" "github" {
  count = var.create_github_role ? 1 : 0

  name                 = coalesce(var.github_role_name, "${var.name_prefix}-github")
  path                 = var.iam_path
  description          = "pipeline-lock: assumed by GitHub Actions runs of ${join(", ", var.github_repositories)}"
  assume_role_policy   = data.aws_iam_policy_document.github_trust[0].json
  max_session_duration = var.role_max_session_duration
  permissions_boundary = var.role_permissions_boundary

  tags = var.tags

  lifecycle {
    precondition {
      condition     = length(var.github_repositories) > 0 && length(local.github_subjects) > 0
      error_message = "create_github_role needs at least one entry in github_repositories and one in github_branches or github_environments."
    }
    precondition {
      condition     = var.create_iam_policy && (var.create_table || var.create_bucket)
      error_message = "create_github_role needs create_iam_policy and a table or bucket."
    }
  }
}

resource "aws_iam_role_policy_attachment" "github" {
  count = var.create_github_role ? 1 : 0

  role       = aws_iam_role.github[0].name
  policy_arn = aws_iam_policy.lock[0].arn
}
