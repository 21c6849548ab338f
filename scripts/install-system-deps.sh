#!/usr/bin/env bash
# Installs the system packages autoresearch-mcp uses, if missing: bubblewrap (the jail),
# and with `all` also chromium (dashboard browser test) and Node.js/npm (MCP client checks).
# Quick and silent when everything is present. Needs root (or sudo) and apt; elsewhere it
# prints what to install and carries on (the server then reports a weaker isolation level).
set -euo pipefail
want=(bubblewrap)
[ "${1:-}" = "all" ] && want+=(chromium nodejs npm git)
missing=()
for pkg in "${want[@]}"; do
  case "$pkg" in
    bubblewrap) command -v bwrap >/dev/null || missing+=(bubblewrap) ;;
    chromium) [ -x /usr/bin/chromium ] || missing+=(chromium) ;;
    nodejs) command -v node >/dev/null || missing+=(nodejs) ;;
    npm) command -v npm >/dev/null || missing+=(npm) ;;
    git) command -v git >/dev/null || missing+=(git) ;;  # combine's merge-file; npm recommends it
  esac
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo"; else
    echo "install-system-deps: please install: ${missing[*]} (no root here)" >&2; exit 0; fi
fi
if ! command -v apt-get >/dev/null; then
  echo "install-system-deps: no apt-get; please install: ${missing[*]}" >&2; exit 0
fi
echo "install-system-deps: installing ${missing[*]}" >&2
$sudo apt-get update -qq
# No recommended packages: npm's alone (node-tap and its tree) doubled the install's time.
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
