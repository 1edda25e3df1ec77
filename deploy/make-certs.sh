#!/usr/bin/env bash
# Make a private CA and a SuperLink server certificate for TLS.
#
#   deploy/make-certs.sh [-o DIR] [-d DAYS] HOST_OR_IP...
#
# Every HOST_OR_IP goes into the certificate's subjectAltName (IPs as IP:, names as DNS:):
# SuperNodes and `flwr` only accept the certificate when the address they dial is listed.
# Give hosts without a port (superlink.example.org, 192.0.2.7, 2001:db8::7).
# Writes DIR (default ./certificates): ca.crt (give it to every SuperNode and flwr user),
# ca.key (keep it offline), server.pem and server.key (for flower-superlink only).
# On any failure nothing is written to DIR, so the command can simply be run again.
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
  if [[ $host =~ ^[A-Za-z0-9.-]+:[0-9]+$ ]]; then
    # A name or IPv4 address followed by :PORT (IPv6 addresses have at least two colons).
    echo "$0: '$host' looks like HOST:PORT; the certificate names hosts only:" \
      "pass '${host%:*}' without the port" >&2
    exit 2
  elif [[ $host == \[* ]]; then
    echo "$0: '$host': pass an IPv6 address without brackets or port, e.g. '::1'" >&2
    exit 2
  elif [[ $host =~ ^[0-9]+(\.[0-9]+){3}$ ]] || [[ $host =~ ^[0-9A-Fa-f:.]+$ && $host == *:*:* ]]; then
    entry="IP:$host"  # IPv4, or IPv6 (openssl rejects a malformed one below)
  elif [[ $host =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]]; then
    entry="DNS:$host"
  else
    echo "$0: '$host' is neither an IP address nor a host name" \
      "(give e.g. superlink.example.org, 192.0.2.7 or 2001:db8::7)" >&2
    exit 2
  fi
  san="${san:+$san,}$entry"
done

files="ca.crt ca.key server.pem server.key"
for f in $files; do
  if [ -e "$out/$f" ]; then
    echo "$0: $out/$f exists; remove $out or choose another -o DIR" >&2
    exit 1
  fi
done
made_out=0
[ -d "$out" ] || made_out=1
mkdir -p "$out"
umask 077
# Everything is made in a scratch folder inside DIR and moved into DIR only when all of it
# succeeded: a failure leaves no partial output behind (and removes DIR if this run made it).
work=$(mktemp -d "$out/.make-certs.XXXXXX")
done_ok=0
cleanup() {
  rm -rf "$work"
  if [ "$done_ok" = 0 ] && [ "$made_out" = 1 ]; then rmdir "$out" 2>/dev/null || true; fi
}
trap cleanup EXIT

# openssl prints key-generation progress on stderr: keep it quiet, but show it all on failure.
run_openssl() {
  if ! openssl "$@" 2>"$work/openssl.err"; then
    echo "$0: 'openssl $1' failed (subjectAltName $san); its error follows; nothing was written to $out:" >&2
    cat "$work/openssl.err" >&2
    exit 1
  fi
}

run_openssl req -x509 -newkey rsa:2048 -nodes -days "$days" -subj "/CN=fedsparse-ca" \
  -keyout "$work/ca.key" -out "$work/ca.crt"
run_openssl req -newkey rsa:2048 -nodes -subj "/CN=$1" \
  -keyout "$work/server.key" -out "$work/server.csr"
printf "subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n" \
  "$san" >"$work/ext.cnf"
run_openssl x509 -req -in "$work/server.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" \
  -CAcreateserial -CAserial "$work/ca.srl" -days "$days" -extfile "$work/ext.cnf" \
  -out "$work/server.pem"
chmod 644 "$work/ca.crt" "$work/server.pem"
for f in $files; do
  mv "$work/$f" "$out/$f"
done
done_ok=1
echo "wrote $out/ca.crt $out/ca.key $out/server.pem $out/server.key (subjectAltName $san)"
