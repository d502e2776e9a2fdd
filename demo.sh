#!/usr/bin/env bash
# The demo: a pool of three simulated agents on two accounts, on temporary
# directories. Tasks flow, account a nears its limit, the sessions fail over
# to b with their conversations, the rest of the tasks finish there. Ends by
# itself within a minute and cleans up. Needs cargo and tmux. The binary is
# built where cargo builds (CARGO_TARGET_DIR and the workspace's settings
# are honoured: `cargo run` finds it).
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v tmux >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get install -y -qq tmux >/dev/null || { apt-get update -qq && apt-get install -y -qq tmux >/dev/null; }
    else
        echo "the demo runs its agents in tmux: install it first (apt-get install tmux)" >&2
        exit 1
    fi
fi
exec cargo run --release --quiet -- demo "$@"
