#!/usr/bin/env bash
# make_app_repo.sh DEST [--force]
#
# Creates a normal git repository at DEST holding the Architect Dashboard API
# (sandbox/architect-api) with a reproducible release history:
#
#   v3.1.0               sandbox/architect-api with releases/to-3.1.0.patch applied
#   v3.2.0  (main)       sandbox/architect-api as it is (adds migration 003)
#   v3.2.1-<name>        one commit each on branch release/v3.2.1-<name>, off v3.2.0,
#                        made by applying releases/v3.2.1-<name>.patch
#                        (crash, unhealthy, slow, erroring, badmigration, brokensmoke,
#                        sluggish, purge, rename, corsprefix, banner, sqlfilter,
#                        opencookie)
#   v3.3.0               a good release after v3.2.0 (an expand-only migration), on
#                        branch release/v3.3.0 off v3.2.0, from releases/v3.3.0.patch
#
# See releases/RELEASES.md for what each bad release does wrong.
#
# Idempotent: when DEST already has every expected tag, nothing is done. A DEST
# that exists but is not such a repository is an error. --force deletes DEST
# and rebuilds it in every case. Fixed author/committer names and dates make
# the commit ids the same on every run for the same sources.
# Only git is used (no go build here: that is the pipeline's job).
set -euo pipefail

usage() { echo "usage: $0 DEST [--force]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
DEST=$1
FORCE=0
if [ $# -eq 2 ]; then
    [ "$2" = "--force" ] || usage
    FORCE=1
fi

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=$HERE/architect-api
REL=$HERE/releases
BAD=(crash unhealthy slow erroring badmigration brokensmoke sluggish purge rename corsprefix banner sqlfilter opencookie leaky)
NEXT=(v3.3.0)  # good releases after v3.2.0, each on its own branch off it
TAGS=(v3.1.0 v3.2.0)
for n in "${BAD[@]}"; do TAGS+=("v3.2.1-$n"); done
TAGS+=("${NEXT[@]}")

die() { echo "make_app_repo: $*" >&2; exit 1; }

have_all_tags() {
    local t
    git -C "$1" rev-parse -q --verify refs/heads/main >/dev/null || return 1
    for t in "${TAGS[@]}"; do
        git -C "$1" rev-parse -q --verify "refs/tags/$t" >/dev/null || return 1
    done
}

# What the repository is made from: when the app or a patch changes, the repository is
# remade (it is generated, never edited by hand), so a pulled change reaches the sandbox.
source_fingerprint() {
    find "$SRC" "$REL" -type f ! -name architect-api ! -name '*.out' ! -name '*.test' -print0 \
        | sort -z | xargs -0 sha256sum | sed "s#  $HERE/#  #" | sha256sum | cut -d' ' -f1
}
FINGERPRINT=$(source_fingerprint)

if [ -e "$DEST" ]; then
    if [ "$FORCE" = 0 ] && [ -d "$DEST/.git" ] && have_all_tags "$DEST" \
        && [ "$(cat "$DEST/.git/architect-source" 2>/dev/null)" = "$FINGERPRINT" ]; then
        echo "make_app_repo: $DEST already has ${TAGS[*]}; nothing to do"
        exit 0
    fi
    if [ -d "$DEST" ] && [ -z "$(ls -A "$DEST")" ]; then
        rmdir "$DEST"
    elif [ "$FORCE" = 1 ] || [ -f "$DEST/.git/architect-source" ] || { [ -d "$DEST/.git" ] && have_all_tags "$DEST"; }; then
        echo "make_app_repo: the app or its release patches changed; remaking $DEST"
        rm -rf "$DEST"
    else
        die "$DEST exists but is not a complete release repository (use --force to rebuild it)"
    fi
fi

[ -f "$SRC/VERSION" ] || die "no app at $SRC"
[ "$(cat "$SRC/VERSION")" = "3.2.0" ] || die "$SRC/VERSION is $(cat "$SRC/VERSION"), expected 3.2.0"
for p in "$REL/to-3.1.0.patch" "${BAD[@]/#/$REL/v3.2.1-}" "${NEXT[@]/#/$REL/}"; do
    case $p in *.patch) ;; *) p=$p.patch ;; esac
    [ -f "$p" ] || die "missing patch $p"
done

# Build next to DEST and move it into place at the end, so an interrupted run
# never leaves a half-made repository behind.
mkdir -p "$(dirname "$DEST")"
WORK=$(mktemp -d "$(dirname "$DEST")/.make_app_repo.XXXXXX")
LOG=$(mktemp)
trap 'rm -rf "$WORK" "$LOG"' EXIT

g() {
    git -C "$WORK" \
        -c user.name="Architect Release Bot" -c user.email="release-bot@architect.localhost" \
        -c commit.gpgsign=false -c tag.gpgsign=false -c core.autocrlf=false \
        -c core.fileMode=true -c advice.detachedHead=false "$@"
}

at() { # at DATE cmd...: run with fixed author/committer dates
    local d=$1; shift
    GIT_AUTHOR_DATE="$d" GIT_COMMITTER_DATE="$d" "$@"
}

apply_patch() { # apply_patch [-R] FILE
    if ! g apply --check "$@" >"$LOG" 2>&1; then
        cat "$LOG" >&2
        die "patch does not apply: $*"
    fi
    g apply --index "$@"
}

release() { # release DATE TAG MESSAGE
    local date=$1 tag=$2 msg=$3 want
    want=${tag#v}
    [ "$(cat "$WORK/VERSION")" = "$want" ] || die "VERSION is $(cat "$WORK/VERSION") for $tag, expected $want"
    at "$date" g commit -q -m "$msg"
    at "$date" g tag -a "$tag" -m "architect-api $want"
}

g init -q -b main
# The working tree of the app, without build outputs (.gitignore covers them too).
(cd "$SRC" && tar --exclude=./architect-api --exclude='*.out' --exclude='*.test' -cf - .) | (cd "$WORK" && tar xf -)
g add -A

# 1. v3.1.0: the app before migration 003 / event severity.
apply_patch "$REL/to-3.1.0.patch"
release "2024-02-01T10:00:00+00:00" v3.1.0 "Release 3.1.0"

# 2. v3.2.0: the tree as it is in sandbox/architect-api.
apply_patch -R "$REL/to-3.1.0.patch"
g add -A
release "2024-02-15T10:00:00+00:00" v3.2.0 "Release 3.2.0: events carry a severity (migration 003)"
if ! diff -rq -x .git -x architect-api -x '*.out' -x '*.test' "$SRC" "$WORK" >"$LOG" 2>&1; then
    cat "$LOG" >&2
    die "v3.2.0 does not match $SRC (to-3.1.0.patch is out of date?)"
fi

# 3. Bad releases, each on its own branch off v3.2.0.
minute=0
declare -A SUBJECT=(
    [crash]="serve: verify the events query before taking traffic"
    [unhealthy]="health: probe the cache keyspace instead of PING"
    [slow]="api: record an audit trail of API requests"
    [erroring]="api: per-process request budget"
    [badmigration]="schema: event tags (004) and error fingerprints (005)"
    [brokensmoke]="auth: logout without a database round trip"
    [sluggish]="api: feature flags for every API request"
    [purge]="events: purge the load gate's synthetic events (004)"
    [rename]="errors: rename stack to stack_trace (004)"
    [corsprefix]="cors: accept the dashboard on any port or deep link"
    [banner]="api: name the build that answered in X-Powered-By"
    [sqlfilter]="events: filter by a list of severities"
    [opencookie]="auth: the dashboard's websocket reads the session cookie"
    [leaky]="serve: log the effective configuration at start"
)
for n in "${BAD[@]}"; do
    minute=$((minute + 5))
    g checkout -q -b "release/v3.2.1-$n" v3.2.0
    apply_patch "$REL/v3.2.1-$n.patch"
    release "$(printf '2024-02-16T%02d:%02d:00+00:00' $((10 + minute / 60)) $((minute % 60)))" "v3.2.1-$n" "Release 3.2.1-$n: ${SUBJECT[$n]}"
done

# 4. Good releases after v3.2.0, each on its own branch off it.
declare -A NEXT_SUBJECT=(
    [v3.3.0]="errors: index resolved errors by resolution time (004, expand-only)"
)
day=0
for t in "${NEXT[@]}"; do
    day=$((day + 1))
    g checkout -q -b "release/$t" v3.2.0
    apply_patch "$REL/$t.patch"
    release "$(printf '2024-03-%02dT10:00:00+00:00' "$day")" "$t" "Release ${t#v}: ${NEXT_SUBJECT[$t]}"
done
g checkout -q main
[ -z "$(g status --porcelain)" ] || die "internal error: working tree not clean"

have_all_tags "$WORK" || die "internal error: tags missing"
chmod 755 "$WORK"
echo "$FINGERPRINT" >"$WORK/.git/architect-source"
mv "$WORK" "$DEST"
trap 'rm -f "$LOG"' EXIT
echo "make_app_repo: created $DEST (main = v3.2.0 $(git -C "$DEST" rev-parse --short HEAD); tags: ${TAGS[*]})"
