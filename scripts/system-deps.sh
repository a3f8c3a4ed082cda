#!/usr/bin/env bash
# System packages the test suite needs (Debian): Prometheus (prometheus + promtool) for the
# scrape-configuration checks and the live Prometheus test, Chromium for rendering reports,
# openssl for the secured test broker's certificates, OpenBLAS for Spark MLlib.
# Idempotent and quiet: installs only what is missing, runs `apt-get update` only then.
# Called by `make test`; without root or apt-get it says what is missing and exits 0 (the tests
# that need a missing tool skip with a reason, or fail when CI=true).
set -euo pipefail

need=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v openssl >/dev/null 2>&1 || need+=(openssl)  # certificates of the secured test broker
# A native BLAS/LAPACK for Spark MLlib's ALS (the spark engine's test): without libblas.so.3 it
# falls back to Java code (slower).
ldconfig -p 2>/dev/null | grep -q 'libblas.so.3 ' || need+=(libopenblas0-pthread)

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" -ne 0 ]; then
    echo "system-deps: missing ${need[*]} (install them with apt-get as root); tests needing them will skip" >&2
    exit 0
fi
echo "system-deps: installing ${need[*]} (Debian packages)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
# --no-install-recommends keeps Chromium lean; prometheus' recommends are not needed for tests.
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The Debian package starts a system Prometheus on :9090 where systemd/invoke-rc.d runs it;
# the tests run their own on a free port, so a running one is harmless.
