# Sourced by .ci/schemathesis.sh and .ci/python_client.sh: start and stop a
# `vellum dev` cluster. The caller sets $vellum (the binary), $work (a work
# directory), $cluster (the cluster directory) and $ready_secs.

dev_pid=""
dev_starts=0

# Starts `vellum dev` on $cluster and waits until it serves; its output goes
# to a new file $dev_out each time (a reused file could still hold the last
# start's "press Ctrl-C" before the new process truncates it).
start_dev() {
    dev_starts=$((dev_starts + 1))
    dev_out="$work/dev-$dev_starts.out"
    "$vellum" dev --data-dir "$cluster" >"$dev_out" 2>&1 &
    dev_pid=$!
    for _ in $(seq 1 "$ready_secs"); do
        grep -q "press Ctrl-C to stop" "$dev_out" && return 0
        if ! kill -0 "$dev_pid" 2>/dev/null; then
            cat "$dev_out" >&2
            echo "vellum dev exited before serving" >&2
            return 1
        fi
        sleep 1
    done
    cat "$dev_out" >&2
    echo "vellum dev did not serve within $ready_secs s" >&2
    return 1
}

# Stops the `vellum dev` started here (SIGINT: it stops its replicas with
# SIGTERM); its replicas are killed by id if it does not finish in time.
stop_dev() {
    [ -n "$dev_pid" ] || return 0
    local children
    children=$(pgrep -P "$dev_pid" || true)
    kill -INT "$dev_pid" 2>/dev/null || true
    for _ in $(seq 1 30); do
        kill -0 "$dev_pid" 2>/dev/null || break
        sleep 1
    done
    if kill -0 "$dev_pid" 2>/dev/null; then
        echo "vellum dev did not stop in 30 s; killing it and its replicas" >&2
        for pid in $dev_pid $children; do kill -KILL "$pid" 2>/dev/null || true; done
    fi
    wait "$dev_pid" 2>/dev/null || true
    dev_pid=""
}
