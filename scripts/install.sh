#!/bin/sh
# Install pipeline-lock on a CI runner or a workstation.
#
#   sh install.sh [--version V|latest] [--dir DIR] [--base-url URL] [--method auto|release|cargo] [--force]
#
# Every option can also come from the environment:
#   PIPELINE_LOCK_VERSION         release to install, e.g. 0.1.0 (default: latest)
#   PIPELINE_LOCK_INSTALL_DIR     where the binary goes (default: /usr/local/bin when writable,
#                                 else $HOME/.local/bin)
#   PIPELINE_LOCK_BASE_URL        releases location; archives are fetched from
#                                 BASE/download/vVERSION/ASSET and "latest" is resolved from the
#                                 redirect of BASE/latest (GitHub's layout; a mirror copies it)
#   PIPELINE_LOCK_INSTALL_METHOD  auto (release archive, cargo when none fits or it cannot be
#                                 fetched), release (archive only) or cargo (build from source)
#
# The release archive (pipeline-lock-VERSION-TARGET.tar.gz, TARGET one of
# x86_64-unknown-linux-musl and aarch64-unknown-linux-musl) is installed only when its
# SHA-256 matches the .sha256 file published beside it. A mismatch is an error, never a
# reason to fall back. The fallback is `cargo install --locked pipeline-lock`.
#
# Exit codes: 0 installed (or already there), 1 failed, 2 usage.
set -eu

DEFAULT_BASE_URL="https://github.com/pipeline-lock/pipeline-lock/releases"

version="${PIPELINE_LOCK_VERSION:-latest}"
dir="${PIPELINE_LOCK_INSTALL_DIR:-}"
base_url="${PIPELINE_LOCK_BASE_URL:-$DEFAULT_BASE_URL}"
method="${PIPELINE_LOCK_INSTALL_METHOD:-auto}"
force=0

say() { printf 'install.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2 2>/dev/null ||
    echo "usage: install.sh [--version V|latest] [--dir DIR] [--base-url URL] [--method auto|release|cargo] [--force]" >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case "$1" in
    --version) [ $# -ge 2 ] || usage; version="$2"; shift 2 ;;
    --version=*) version="${1#*=}"; shift ;;
    --dir) [ $# -ge 2 ] || usage; dir="$2"; shift 2 ;;
    --dir=*) dir="${1#*=}"; shift ;;
    --base-url) [ $# -ge 2 ] || usage; base_url="$2"; shift 2 ;;
    --base-url=*) base_url="${1#*=}"; shift ;;
    --method) [ $# -ge 2 ] || usage; method="$2"; shift 2 ;;
    --method=*) method="${1#*=}"; shift ;;
    --force) force=1; shift ;;
    -h|--help) usage ;;
    *) say "unknown argument: $1"; usage ;;
  esac
done

case "$method" in auto|release|cargo) ;; *) say "--method must be auto, release or cargo"; exit 2 ;; esac
version="${version#v}"
base_url="${base_url%/}"

if [ -z "$dir" ]; then
  if [ -w /usr/local/bin ]; then dir=/usr/local/bin; else dir="${HOME:?}/.local/bin"; fi
fi

have() { command -v "$1" >/dev/null 2>&1; }

# fetch URL FILE
fetch() {
  if have curl; then
    curl --proto '=https,http' -fsSL --retry 3 --connect-timeout 20 -o "$2" "$1"
  elif have wget; then
    wget -q -T 20 -t 3 -O "$2" "$1"
  else
    say "neither curl nor wget is installed"
    return 1
  fi
}

# resolve_latest: print the newest released version from the BASE/latest redirect.
resolve_latest() {
  if have curl; then
    url=$(curl -fsSLI -o /dev/null -w '%{url_effective}' "$base_url/latest") || return 1
  elif have wget; then
    url=$(wget -S --spider --max-redirect=5 "$base_url/latest" 2>&1 | sed -n 's/^ *[Ll]ocation: *\([^ ]*\).*/\1/p' | tail -n 1 | tr -d '\r') || return 1
  else
    return 1
  fi
  tag="${url##*/}"
  case "$tag" in
    v[0-9]*) printf '%s\n' "${tag#v}" ;;
    *) return 1 ;;
  esac
}

# sha256_of FILE
sha256_of() {
  if have sha256sum; then
    sha256sum "$1" | cut -d' ' -f1
  elif have shasum; then
    shasum -a 256 "$1" | cut -d' ' -f1
  elif have openssl; then
    openssl dgst -sha256 -r "$1" | cut -d' ' -f1
  else
    say "no sha256sum, shasum or openssl to verify the download"
    return 1
  fi
}

installed_version() {
  [ -x "$dir/pipeline-lock" ] || return 1
  "$dir/pipeline-lock" --version 2>/dev/null | sed -n 's/^pipeline-lock[[:space:]]*v\{0,1\}\([^[:space:]]*\).*/\1/p' | head -n 1
}

target=""
if [ "$(uname -s)" = Linux ]; then
  case "$(uname -m)" in
    x86_64|amd64) target=x86_64-unknown-linux-musl ;;
    aarch64|arm64) target=aarch64-unknown-linux-musl ;;
  esac
fi

tmp=$(mktemp -d 2>/dev/null || mktemp -d -t pipeline-lock)
trap 'rm -rf "$tmp"' EXIT
trap 'exit 1' INT TERM

# Returns 0 installed, 3 no release fits or could not be fetched (fallback allowed),
# anything else a hard failure.
install_release() {
  if [ -z "$target" ]; then
    say "no release archive for $(uname -s) $(uname -m)"
    return 3
  fi
  if [ "$version" = latest ]; then
    version=$(resolve_latest) || { say "could not resolve the latest release from $base_url/latest"; return 3; }
  fi
  if [ "$force" = 0 ] && [ "$(installed_version || true)" = "$version" ]; then
    say "pipeline-lock $version is already in $dir"
    return 0
  fi
  asset="pipeline-lock-$version-$target.tar.gz"
  url="$base_url/download/v$version/$asset"
  say "downloading $url"
  fetch "$url" "$tmp/$asset" || { say "download failed: $url"; return 3; }
  fetch "$url.sha256" "$tmp/$asset.sha256" || { say "download failed: $url.sha256"; return 3; }
  want=$(tr -s ' \t\r' '  ' < "$tmp/$asset.sha256" | sed -n '1s/^ *\([0-9A-Fa-f]\{64\}\).*/\1/p' | tr 'A-F' 'a-f')
  [ -n "$want" ] || { say "no SHA-256 in $url.sha256"; return 1; }
  got=$(sha256_of "$tmp/$asset") || return 1
  if [ "$got" != "$want" ]; then
    say "checksum mismatch for $asset: expected $want, got $got"
    return 1
  fi
  say "checksum ok ($got)"
  mkdir -p "$tmp/x"
  tar -xzf "$tmp/$asset" -C "$tmp/x" || { say "could not unpack $asset"; return 1; }
  bin=$(find "$tmp/x" -type f -name pipeline-lock | head -n 1)
  [ -n "$bin" ] || { say "$asset holds no pipeline-lock binary"; return 1; }
  place "$bin"
}

install_cargo() {
  have cargo || { say "cargo is not installed; cannot build pipeline-lock from source"; return 1; }
  set -- install --locked --root "$tmp/cargo" pipeline-lock
  [ "$version" = latest ] || set -- "$@" --version "$version"
  say "cargo $*"
  cargo "$@" || return 1
  place "$tmp/cargo/bin/pipeline-lock"
}

place() {
  mkdir -p "$dir" || return 1
  # Copy then rename, so a running pipeline-lock is never overwritten in place.
  cp "$1" "$dir/.pipeline-lock.new.$$" || return 1
  chmod 0755 "$dir/.pipeline-lock.new.$$" || return 1
  mv -f "$dir/.pipeline-lock.new.$$" "$dir/pipeline-lock" || return 1
  say "installed $("$dir/pipeline-lock" --version 2>/dev/null || echo pipeline-lock) to $dir/pipeline-lock"
  case ":$PATH:" in *":$dir:"*) ;; *) say "note: $dir is not on PATH" ;; esac
}

case "$method" in
  cargo) install_cargo ;;
  release) install_release || die "could not install the release archive" ;;
  auto)
    rc=0
    install_release || rc=$?
    case "$rc" in
      0) ;;
      3) say "falling back to cargo install"; install_cargo || die "no release archive and cargo install failed" ;;
      *) die "release install failed" ;;
    esac
    ;;
esac
