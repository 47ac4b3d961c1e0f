#!/bin/sh
# make-certs.sh - a small PKI for PyazDB with the openssl command.
#   scripts/make-certs.sh DIR ca
#       DIR/ca.crt, DIR/ca.key: a CA (10 years)
#   scripts/make-certs.sh DIR node NAME [IP|DNS ...]
#       DIR/NAME.crt, DIR/NAME.key: a server and client certificate signed
#       by DIR/ca.*, naming NAME (DNS subjectAltName: the node-id, which the
#       peer transport checks, DNS:NAME even when NAME reads as an IP
#       address) and every IP address or DNS name given (what clients
#       dial: 127.0.0.1, the machine's address, its host name)
#   scripts/make-certs.sh DIR server NAME [IP|DNS ...]
#       DIR/NAME.crt, DIR/NAME.key: a server certificate only (serverAuth),
#       for mandi or another HTTPS server, naming NAME and every IP address
#       or DNS name given; it cannot dial a node's Raft port as a peer
#   scripts/make-certs.sh DIR client NAME
#       DIR/NAME.crt, DIR/NAME.key: a client certificate (CN=NAME)
# A CA that signs peers' certificates should sign only nodes' certificates
# (or peers get a CA of their own): any certificate it signs that names a
# member speaks for that member on the Raft port.
# DAYS (default 825) sets the validity of node and client certificates.
# Keys are ECDSA P-256, written with mode 600.
set -eu

usage() {
    echo "usage: $0 DIR ca | DIR node NAME [IP|DNS ...]" \
        "| DIR server NAME [IP|DNS ...] | DIR client NAME" >&2
    exit 2
}
[ $# -ge 2 ] || usage
dir=$1 kind=$2
shift 2
days=${DAYS:-825}
mkdir -p "$dir"
umask 077

newkey() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
        -out "$1" 2>/dev/null
}

# sign NAME SUBJECT EXTFILE
sign() {
    openssl req -new -key "$dir/$1.key" -subj "$2" -out "$dir/$1.csr"
    openssl x509 -req -in "$dir/$1.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
        -CAcreateserial -days "$days" -sha256 -extfile "$3" \
        -out "$dir/$1.crt" 2>/dev/null
    rm -f "$dir/$1.csr" "$3"
    chmod 644 "$dir/$1.crt"
}

case $kind in
ca)
    [ $# -eq 0 ] || usage
    newkey "$dir/ca.key"
    openssl req -x509 -new -key "$dir/ca.key" -days 3650 -sha256 \
        -subj "/CN=PyazDB CA" -out "$dir/ca.crt" \
        -addext "basicConstraints=critical,CA:true" \
        -addext "keyUsage=critical,keyCertSign,cRLSign"
    chmod 644 "$dir/ca.crt"
    ;;
node | server)
    [ $# -ge 1 ] || usage
    name=$1
    shift
    san="DNS:$name"
    for a in "$@"; do
        case $a in
        *[!0-9.]* ) case $a in *:*) san="$san,IP:$a" ;; *) san="$san,DNS:$a" ;; esac ;;
        *) san="$san,IP:$a" ;;
        esac
    done
    # A node dials its peers with its certificate: client too. A server
    # only answers.
    usage_ext="serverAuth,clientAuth"
    [ "$kind" = node ] || usage_ext="serverAuth"
    newkey "$dir/$name.key"
    ext=$(mktemp)
    printf '%s\n' "basicConstraints=CA:false" \
        "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=$usage_ext" \
        "subjectAltName=$san" > "$ext"
    sign "$name" "/CN=$name" "$ext"
    ;;
client)
    [ $# -eq 1 ] || usage
    name=$1
    newkey "$dir/$name.key"
    ext=$(mktemp)
    printf '%s\n' "basicConstraints=CA:false" \
        "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=clientAuth" > "$ext"
    sign "$name" "/CN=$name" "$ext"
    ;;
*) usage ;;
esac
