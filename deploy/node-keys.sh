#!/usr/bin/env bash
# Make SuperNode authentication key pairs and, optionally, register them with the SuperLink.
#
#   deploy/node-keys.sh [-o DIR] [-c CONNECTION] NAME...
#
# For each NAME writes DIR/NAME (private key: copy it to that device only, pass it to
# flower-supernode --auth-supernode-private-key) and DIR/NAME.pub (ECDSA P-384, OpenSSH format).
# With -c, registers each public key on the SuperLink of CONNECTION ($FLWR_HOME/config.toml)
# with `flwr supernode register`; that SuperLink must run with --enable-supernode-auth and TLS.
# Existing key pairs are kept and registered again with -c; a key the SuperLink already has is
# reported ("NAME: already registered") and skipped, so the script can be re-run. Any other
# registration failure stops the script with flwr's message.
set -euo pipefail

usage() { echo "usage: $0 [-o DIR] [-c CONNECTION] NAME..." >&2; exit 2; }
out=node-keys
connection=""
while getopts "o:c:h" opt; do
  case "$opt" in
    o) out=$OPTARG ;;
    c) connection=$OPTARG ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || usage
command -v ssh-keygen >/dev/null || { echo "$0: ssh-keygen not found; install openssh-client" >&2; exit 1; }
if [ -n "$connection" ] && ! command -v flwr >/dev/null; then
  echo "$0: -c $connection: flwr not found on PATH; activate the venv fedsparse is installed in" >&2
  exit 1
fi

mkdir -p "$out"
for name in "$@"; do
  [[ $name =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "$0: node name '$name' may only use A-Z a-z 0-9 _ . -" >&2; exit 2; }
  if [ ! -e "$out/$name" ]; then
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "$name" -f "$out/$name"
    echo "wrote $out/$name and $out/$name.pub"
  fi
  if [ -n "$connection" ]; then
    # flwr reports a key that is already registered as "[code: 23] Public key already in use."
    if reply=$(flwr supernode register "$out/$name.pub" "$connection" --name "$name" 2>&1); then
      printf '%s\n' "$reply"
    else
      status=$?
      if [[ $reply == *"Public key already in use"* ]]; then
        echo "$name: already registered"
      else
        printf '%s\n' "$reply" >&2
        echo "$0: registering $out/$name.pub ($name) on connection '$connection' failed" \
          "(flwr exit status $status, message above); fix that and run the script again" >&2
        exit 1
      fi
    fi
  fi
done
