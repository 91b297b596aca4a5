#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh machine, then checks formatting,
# lints with warnings denied, and runs every test. Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# curl is used by the README's examples.
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# The handler tests run the example handlers: examples/handler.py and examples/handler.js.
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
# tests/it/deploy.rs parses the Kubernetes manifests of deploy/ with PyYAML, in whichever
# python3 is first on PATH: from PyPI where pip may install (pyenv, a venv), else Debian's.
if ! python3 -c 'import yaml' >/dev/null 2>&1; then
    python3 -m pip install -q --disable-pip-version-check pyyaml >/dev/null 2>&1 || need_apt+=(python3-yaml)
fi
# scripts/schemathesis.sh runs schemathesis from a Python virtual environment (below).
python3 -c 'import ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
# https:// handlers and Consul agents without a CA of their own are verified against the
# system's CA bundle (the tests check that it does not vouch for their test certificates).
[ -f /etc/ssl/certs/ca-certificates.crt ] || need_apt+=(ca-certificates)
# The etcd feature: etcd-client compiles its protocol with protoc; its tests run real etcd.
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need_apt+=(libprotobuf-dev)
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
# The status page test (tests/it/status_page.rs) renders the page in a real headless Chromium.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# The failure tests across network namespaces (tests/netns/): ip, tc, and nftables to cut a
# node off (iptables as well, for hand-run experiments); the delay line of test (e) is python3.
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
command -v iptables >/dev/null 2>&1 || need_apt+=(iptables)
# Test (f) of tests/netns/ seeds nodes from a DNS name that a real DNS server answers: the
# dnsmasq binary only (dnsmasq-base), with no service that would take over the machine's DNS.
command -v dnsmasq >/dev/null 2>&1 || need_apt+=(dnsmasq-base)
# tests/it/cli.rs reads the man pages `meshage man` prints with man-db's `man -l`.
command -v man >/dev/null 2>&1 || need_apt+=(man-db)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "==> installing ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
# schemathesis (PyPI) checks the HTTP API against its description (scripts/schemathesis.sh),
# pinned, in a virtual environment under the target directory. The newest Python there is
# gets it: on 3.11, hypothesis trips over a CPython bug in ast.parse ("AST constructor
# recursion depth mismatch") in schemathesis's coverage phase, which the script then skips.
SCHEMATHESIS_VERSION=4.32.5
schemathesis_env=${CARGO_TARGET_DIR:-target}/schemathesis-$SCHEMATHESIS_VERSION
if ! [ -x "$schemathesis_env/bin/schemathesis" ]; then
    for python in python3.14 python3.13 python3.12 python3; do
        "$python" -c '' >/dev/null 2>&1 && break
    done
    echo "==> installing schemathesis $SCHEMATHESIS_VERSION ($("$python" --version))"
    "$python" -m venv --clear "$schemathesis_env"
    "$schemathesis_env/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy (warnings denied)"
cargo clippy --all-targets --locked -- -D warnings
cargo clippy --all-targets --all-features --locked -- -D warnings
echo "==> cargo doc (warnings denied, as docs.rs builds it)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features --locked
echo "==> cargo test (every feature: the etcd and Consul backends too)"
# With every feature, this includes tests/fuzz_corpus.rs (feature `fuzzing`): the fuzz targets'
# seeds and every input that once crashed one, replayed through the same entry points in well
# under a second. The long runs need cargo-fuzz: see RELIABILITY.md, "Fuzzed decoders".
cargo test --all-targets --all-features --locked
cargo test --doc --all-features --locked
echo "==> schemathesis against a live 3-node cluster"
SCHEMATHESIS=$schemathesis_env/bin/schemathesis bash scripts/schemathesis.sh
