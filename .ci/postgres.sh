# shellcheck shell=bash
# Sourced by .ci/run (or by hand: `source .ci/postgres.sh`): a throwaway PostgreSQL for the SQL source tests.
# Installs PostgreSQL from Debian packages if it is missing, starts a cluster in a temporary folder listening only on
# 127.0.0.1 (and a socket in that folder), creates role and database `ftflow` with a random password, and exports
#   FTFLOW_TEST_PGPASSWORD    the password
#   FTFLOW_TEST_POSTGRES_URL  postgresql+psycopg2://ftflow:${env:FTFLOW_TEST_PGPASSWORD}@127.0.0.1:PORT/ftflow
# The server is stopped and its folder removed when the sourcing shell exits (an EXIT trap). With
# FTFLOW_TEST_POSTGRES_URL already set, the server it names is used and nothing is started.

ftflow_pg_bin() {
    find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1
}

# initdb and postgres refuse to run as root: as root, run them as the `postgres` user the package creates.
ftflow_pg_as_owner() {
    if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

ftflow_pg_start() {
    if [[ -n "${FTFLOW_TEST_POSTGRES_URL:-}" ]]; then
        echo "postgres: using the server in FTFLOW_TEST_POSTGRES_URL"
        return 0
    fi
    local bin
    bin=$(ftflow_pg_bin)
    if [[ -z "$bin" ]]; then
        local sudo=""
        [[ $(id -u) -eq 0 ]] || sudo=sudo
        echo "postgres: installing the Debian package"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
        bin=$(ftflow_pg_bin)
    fi

    FTFLOW_PG_DIR=$(mktemp -d -t ftflow-pg.XXXXXX)
    [[ $(id -u) -eq 0 ]] && chown postgres: "$FTFLOW_PG_DIR"
    trap 'ftflow_pg_stop' EXIT

    local port=54329
    while (: </dev/tcp/127.0.0.1/"$port") 2>/dev/null; do port=$((port + 1)); done  # taken: try the next one

    # Trust over the socket in our own folder (to create the role); passwords over TCP, as the tests connect.
    ftflow_pg_as_owner "$bin/initdb" -D "$FTFLOW_PG_DIR/data" -U postgres --auth-local=trust \
        --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >/dev/null
    # fsync off: the data is thrown away at exit, durability buys nothing here.
    ftflow_pg_as_owner "$bin/pg_ctl" -D "$FTFLOW_PG_DIR/data" -l "$FTFLOW_PG_DIR/server.log" -w -o \
        "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$FTFLOW_PG_DIR -c fsync=off" \
        start >/dev/null

    FTFLOW_TEST_PGPASSWORD=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
    "$bin/psql" -q -h "$FTFLOW_PG_DIR" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
        -c "CREATE ROLE ftflow LOGIN CREATEDB PASSWORD '$FTFLOW_TEST_PGPASSWORD'" \
        -c "CREATE DATABASE ftflow OWNER ftflow" >/dev/null
    export FTFLOW_TEST_PGPASSWORD
    # The placeholder stays literal: the tests resolve it the way a recipe's URL is resolved.
    export FTFLOW_TEST_POSTGRES_URL="postgresql+psycopg2://ftflow:\${env:FTFLOW_TEST_PGPASSWORD}@127.0.0.1:$port/ftflow"
    echo "postgres: started on 127.0.0.1:$port (data in $FTFLOW_PG_DIR)"
}

ftflow_pg_stop() {
    [[ -n "${FTFLOW_PG_DIR:-}" && -d "$FTFLOW_PG_DIR" ]] || return 0
    ftflow_pg_as_owner "$(ftflow_pg_bin)/pg_ctl" -D "$FTFLOW_PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$FTFLOW_PG_DIR"
}

ftflow_pg_start
