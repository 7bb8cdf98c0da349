#!/usr/bin/env bash
# `npm test` runs this first (the pretest script): the tests drive real OpenSSH (sshd, ssh,
# ssh-keygen), systemd-analyze (the agent's unit file) and Chromium (passkey pages). As root it
# installs what is missing; otherwise it stops at once with the exact command to run.
# DSTACK_CA_TEST_PACKAGES replaces the list (the first-hour test uses it to see the refusal).
set -euo pipefail
packages=(${DSTACK_CA_TEST_PACKAGES:-openssh-server openssh-client systemd chromium})

if ! command -v dpkg-query >/dev/null; then
  echo "dstack-ca: not a Debian system: make sure these are installed before the tests: ${packages[*]}" >&2
  exit 0
fi
missing=()
for p in "${packages[@]}"; do
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" = installed ] || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

install=(apt-get install -y -qq --no-install-recommends "${missing[@]}")
if [ "$(id -u)" -ne 0 ]; then
  echo "dstack-ca: the tests need ${missing[*]}; install them as root, then run npm test again:" >&2
  echo "  sudo apt-get update && sudo ${install[*]}" >&2
  exit 1
fi
echo "dstack-ca: installing what the tests need: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
"${install[@]}"
