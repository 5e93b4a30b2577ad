#!/usr/bin/env bash
# EMR bootstrap action: install one build of marketsignals on this node from its S3 artifact.
#
#   install-marketsignals.sh --artifact s3://BUCKET/PREFIX/VERSION/BUILD_ID [--install-dir /opt/marketsignals]
#
# Rendered into RunJobFlow by `marketsignals emr render` (BootstrapActions). Layout on the node:
#   INSTALL_DIR/VERSION-BUILD_ID/   manifest.json, env/ (the venv-pack archive unpacked), jars/, jobs/, conf/
#   INSTALL_DIR/current          -> VERSION-BUILD_ID   (spark-env PYSPARK_PYTHON = INSTALL_DIR/current/env/bin/python)
# Idempotent: a build already installed is left alone (a second run only re-points `current`); an
# interrupted install never becomes visible, because it is staged and moved into place at the end.
# Every file is checked against the sha256 in the manifest before anything is installed.
set -euo pipefail

log() { printf '%s install-marketsignals: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }

artifact=""
install_dir="/opt/marketsignals"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --artifact) artifact="${2:?--artifact needs an s3:// URI}"; shift 2 ;;
    --install-dir) install_dir="${2:?--install-dir needs a folder}"; shift 2 ;;
    *) die "unknown argument '$1' (usage: $0 --artifact s3://BUCKET/PREFIX/VERSION/BUILD_ID [--install-dir DIR])" ;;
  esac
done
[[ "$artifact" == s3://* ]] || die "--artifact s3://BUCKET/PREFIX/VERSION/BUILD_ID is required"
artifact="${artifact%/}"
build="$(basename "$(dirname "$artifact")")-$(basename "$artifact")"
target="$install_dir/$build"

# EMR runs bootstrap actions as the hadoop user, with passwordless sudo.
sudo_cmd=()
if [[ "$(id -u)" -ne 0 ]]; then sudo_cmd=(sudo); fi

point_current() {
  ln -sfn "$build" "$install_dir/.current.$$"
  mv -T "$install_dir/.current.$$" "$install_dir/current"
  log "current -> $build"
}

if [[ -f "$target/.installed" ]]; then
  log "build $build already installed in $target: nothing to download"
  point_current
  exit 0
fi

log "installing build $build from $artifact into $target"
if [[ ! -d "$install_dir" ]]; then
  "${sudo_cmd[@]}" mkdir -p "$install_dir"
  "${sudo_cmd[@]}" chown "$(id -u):$(id -g)" "$install_dir"
fi
staging="$(mktemp -d "$install_dir/.staging-$build.XXXXXX")"
trap 'rm -rf "$staging"' EXIT

log "downloading the artifact"
aws s3 cp --recursive --only-show-errors "$artifact/" "$staging/"
[[ -f "$staging/manifest.json" ]] || die "$artifact/manifest.json not found: upload the artifact first (marketsignals emr upload)"

log "verifying sha256 of every file against the manifest"
(cd "$staging" && python3 -c '
import json
manifest = json.load(open("manifest.json"))
for path, info in sorted(manifest["files"].items()):
    print(info["sha256"] + "  " + path)
' | sha256sum --check --quiet --strict) || die "checksum mismatch: the artifact in $artifact is corrupt or incomplete"

read -r py_version py_prefix env_archive < <(cd "$staging" && python3 -c '
import json
m = json.load(open("manifest.json"))
print(m["python"]["version"], m["python"]["prefix"], m["environment"])
')
interpreter="$py_prefix/bin/python$py_version"
if [[ -x "$interpreter" ]]; then
  log "interpreter $interpreter present"
elif command -v dnf >/dev/null 2>&1; then
  log "interpreter $interpreter missing: installing python$py_version with dnf"
  "${sudo_cmd[@]}" dnf install -y -q "python$py_version"
  [[ -x "$interpreter" ]] || die "dnf installed python$py_version but $interpreter is still missing"
else
  die "$interpreter is missing and there is no dnf to install it (build the artifact with --python-prefix of this node's python$py_version)"
fi

log "unpacking $env_archive"
mkdir "$staging/env"
tar -xzf "$staging/$env_archive" -C "$staging/env"
rm -f "$staging/$env_archive"
"$staging/env/bin/python" -c 'import marketsignals, pandas, pyarrow; print("import check ok: marketsignals", marketsignals.__version__)' \
  || die "the unpacked environment does not import marketsignals with $interpreter"

touch "$staging/.installed"
rm -rf "$target"
mv -T "$staging" "$target"
trap - EXIT
point_current
log "done: $(du -sh "$target" | cut -f1) in $target"
