#!/bin/bash
# Tracker's deploy.sh example (its Locks guide, "Prevent Concurrent Deployments"), unchanged
# apart from the URL ($TRACKER_URL) and the bearer token ($TRACKER_TOKEN); ./deploy-app.sh
# is $DEPLOY_CMD. tests/serve.rs runs it against `pipeline-lock serve`.

# Try to acquire lock
LOCK_RESPONSE=$(curl -s -X POST ${TRACKER_URL}/api/v1alpha1/lock \
  -H "Authorization: Bearer ${TRACKER_TOKEN}" \
  -H "Content-Type: application/json" \
  -d "{
    \"service\": \"${LOCK_SERVICE}\",
    \"who\": \"${CI_PIPELINE_ID}\"
  }")

LOCK_ID=$(echo $LOCK_RESPONSE | jq -r '.id')

if [ "$LOCK_ID" == "null" ]; then
  echo "Deployment already in progress"
  exit 1
fi

# Perform deployment
echo "Deploying application..."
$DEPLOY_CMD

# Release lock
curl -H "Authorization: Bearer ${TRACKER_TOKEN}" "${TRACKER_URL}/api/v1alpha1/unlock/${LOCK_ID}"
