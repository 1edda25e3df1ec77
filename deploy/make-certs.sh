#!/usr/bin/env bash
# Make a private CA and a SuperLink server certificate for TLS.
#
#   deploy/make-certs.sh [-o DIR] [-d DAYS] HOST_OR_IP...
#
# Every HOST_OR_IP goes into the certificate's subjectAltName (IPs as IP:, names as DNS:):
# SuperNodes and `flwr` only accept the certificate when the address they dial is listed.
# Writes DIR (default ./certificates): ca.crt (give it to every SuperNode and flwr user),
# ca.key (keep it offline), server.pem and server.key (for flower-superlink only).
set -euo pipefail

usage() { echo "usage: $0 [-o DIR] [-d DAYS] HOST_OR_IP..." >&2; exit 2; }
out=certificates
days=365
while getopts "o:d:h" opt; do
  case "$opt" in
    o) out=$OPTARG ;;
    d) days=$OPTARG ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || usage
[[ $days =~ ^[1-9][0-9]*$ ]] || { echo "$0: -d $days: DAYS must be a positive integer" >&2; exit 2; }

san=""
for host in "$@"; do
  if [[ $host =~ ^[0-9]+(\.[0-9]+){3}$ || $host == *:* ]]; then
    entry="IP:$host"
  elif [[ $host =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]]; then
    entry="DNS:$host"
  else
    echo "$0: '$host' is neither an IP address nor a host name" >&2
    exit 2
  fi
  san="${san:+$san,}$entry"
done

mkdir -p "$out"
if [ -e "$out/server.key" ]; then
  echo "$0: $out/server.key exists; remove $out or choose another -o DIR" >&2
  exit 1
fi
umask 077
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

openssl req -x509 -newkey rsa:2048 -nodes -days "$days" -subj "/CN=fedsparse-ca" \
  -keyout "$out/ca.key" -out "$out/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=$1" \
  -keyout "$out/server.key" -out "$work/server.csr" 2>/dev/null
printf "subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n" \
  "$san" >"$work/ext.cnf"
openssl x509 -req -in "$work/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
  -CAcreateserial -CAserial "$work/ca.srl" -days "$days" -extfile "$work/ext.cnf" \
  -out "$out/server.pem" 2>/dev/null
chmod 644 "$out/ca.crt" "$out/server.pem"
echo "wrote $out/ca.crt $out/ca.key $out/server.pem $out/server.key (subjectAltName $san)"
