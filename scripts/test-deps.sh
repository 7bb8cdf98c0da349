#!/usr/bin/env bash
# `npm test` runs this first (the pretest script): the tests drive real OpenSSH (sshd, ssh,
# ssh-keygen), systemd-analyze (the agent's unit file) and Chromium (passkey pages). As root it
# installs what is missing; otherwise it stops at once with the exact command to run.
# DSTACK_CA_TEST_PACKAGES replaces the list (the first-hour test uses it to see the refusal).
set -euo pipefail
set -f # the list is words, never globs
# Read into an array without word-splitting tricks, and refuse anything that is not a plain
# Debian package name: every word reaches apt-get as root, where "-o..." would be an option.
read -ra packages <<<"${DSTACK_CA_TEST_PACKAGES:-openssh-server openssh-client systemd chromium}"
for p in "${packages[@]}"; do
  if [[ "$p" == -* || ! "$p" =~ ^[a-z0-9.+-]+$ ]]; then
    echo "dstack-ca: DSTACK_CA_TEST_PACKAGES: '$p' is not a package name (lower-case letters, digits and . + - only, not starting with -)" >&2
    exit 2
  fi
done

if ! command -v dpkg-query >/dev/null; then
  echo "dstack-ca: not a Debian system: make sure these are installed before the tests: ${packages[*]}" >&2
  exit 0
fi
missing=()
for p in "${packages[@]}"; do
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" = installed ] || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

install=(apt-get install -y -qq --no-install-recommends -- "${missing[@]}")
# The names are checked above, so the hint for a human can leave the "--" out.
hint="apt-get install -y -qq --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "dstack-ca: the tests need ${missing[*]}; install them as root, then run npm test again:" >&2
  echo "  sudo apt-get update && sudo $hint" >&2
  exit 1
fi
echo "dstack-ca: installing what the tests need: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
"${install[@]}"
