#!/usr/bin/env bash
# A walk through the store, the GitOps sync and the control plane, on
# temporary directories: declare a pool, watch the daemon keep the store in
# step with a manifest directory (change, prune, a broken file that harms
# nothing), ask its HTTP API and metrics, then clean up.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin="$PWD/target/release/claude-failover"
work=$(mktemp -d)
daemon=""
cleanup() { [ -n "$daemon" ] && kill "$daemon" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
export CLAUDE_FAILOVER_STORE="$work/store" XDG_STATE_HOME="$work/state" XDG_CONFIG_HOME="$work/config"
cf() { echo "\$ claude-failover $*" >&2; "$bin" "$@"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# Waits (up to 10 s) until the command succeeds.
until_ok() { for _ in $(seq 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "gave up waiting for: $*" >&2; return 1; }

step "Declare a pool: 2 accounts, 3 sessions, 3 tasks"
mkdir -p "$work/pool"
cp manifests/examples/*.yaml "$work/pool/"
cf apply -f "$work/pool"
cf get all

step "Keep the directory synced (the daemon; logs below are its own)"
"$bin" run --manifests "$work/pool" --resync 2s --listen 127.0.0.1:0 >"$work/daemon.log" 2>&1 &
daemon=$!
until_ok grep -q "sync pass complete" "$work/daemon.log"
cf get sessions -o wide

step "The control plane: readiness, the token-guarded API, Prometheus metrics"
url=$(sed -n 's/.*"url": "\(.*\)".*/\1/p' "$work/state/claude-failover/api.json")
until_ok curl -sf "$url/readyz"
curl -s "$url/readyz"; echo
curl -s -o /dev/null -w 'GET /api/v1/tasks without the token: %{http_code}\n' "$url/api/v1/tasks"
token=$(cf token)
curl -s -H "Authorization: Bearer $token" "$url/api/v1/namespaces/default/tasks" | head -c 400; echo ...
curl -s "$url/metrics" | grep -E '^claude_failover_(build_info|tasks)\{'

step "Edit a manifest: ccl-2 moves to another workdir"
sed -i 's|~/code/web|~/code/website|' "$work/pool/sessions.yaml"
until_ok sh -c "'$bin' get session ccl-2 -o yaml | grep -q website"
cf get sessions -o wide
cf describe session ccl-2 | sed -n '/^Events:/,$p'

step "Remove a file: its tasks are pruned from the store"
rm "$work/pool/tasks.yaml"
until_ok sh -c "! '$bin' get task fix-login"
cf get tasks || true

step "A broken file is reported with file:line:col, and nothing it declared is lost"
printf 'apiVersion: claude-failover.io/v1alpha1\nkind: Account\nmetadata:\n  name: work\nspec:\n  configDir: ~/.claude-work\n  thresholds: {fiveHour: 150}\n' > "$work/pool/accounts.yaml"
until_ok grep -q "accounts.yaml:7" "$work/daemon.log"
grep "accounts.yaml:7" "$work/daemon.log" | tail -1
cf get accounts

step "Done. The same verbs work against your own store: see the README."
