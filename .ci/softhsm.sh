# Sourced by .ci/run: SoftHSM2 for the PKCS#11 KEK and signing-key tests
# (tests/crypto_hsm.rs).
# Installs the Debian package if missing (bounded), initialises one token in a
# fresh temp dir and exports what the tests read. On any failure it exports
# nothing, and the HSM tests say "SKIP: ..." instead of failing CI for a
# missing package; CI prints which it was.
softhsm_setup() {
    local module=/usr/lib/softhsm/libsofthsm2.so
    if ! command -v softhsm2-util >/dev/null 2>&1 || [ ! -e "$module" ]; then
        echo "installing softhsm2 (bounded: at most 8 minutes in all)"
        DEBIAN_FRONTEND=noninteractive timeout 180 apt-get install -y -q softhsm2 >/dev/null 2>&1 \
            || { timeout 120 apt-get update -q >/dev/null 2>&1 \
                 && DEBIAN_FRONTEND=noninteractive timeout 180 apt-get install -y -q softhsm2 >/dev/null 2>&1; } \
            || { echo "softhsm2 could not be installed: the HSM tests will skip"; return 0; }
    fi
    local dir
    dir="$(mktemp -d)"
    mkdir -p "$dir/tokens"
    printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n' \
        "$dir" > "$dir/softhsm2.conf"
    export SOFTHSM2_CONF="$dir/softhsm2.conf"
    # Test-only PINs for a throwaway token in a temp dir.
    local pin=vellum-ci-user-pin so_pin=vellum-ci-so-pin
    timeout 60 softhsm2-util --init-token --free --label vellum-ci \
        --pin "$pin" --so-pin "$so_pin" >/dev/null \
        || { echo "softhsm2 token init failed: the HSM tests will skip"; unset SOFTHSM2_CONF; return 0; }
    export VELLUM_TEST_PKCS11_MODULE="$module"
    export VELLUM_TEST_PKCS11_TOKEN=vellum-ci
    export VELLUM_TEST_PKCS11_PIN="$pin"
    echo "softhsm2 token vellum-ci in $dir"
}
softhsm_setup
