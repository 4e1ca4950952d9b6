#!/usr/bin/env bash
# Checks of deploy/ that need tools the test suite cannot assume (tests/unit/test_deploy_files.py
# runs everything that needs only Python): each tool's own validator on the file it reads.
#
#   deploy/verify.sh
#
# - docker compose config: the compose file against the Compose Specification (compose v2;
#   with only the old docker-compose v1, on a copy without the top-level `name:` it predates);
# - systemd-analyze verify: every unit, in a scratch root with stub binaries at the paths the
#   units name (verify refuses an ExecStart whose binary is missing);
# - supervisord's own option processing on supervisord.conf, with the paths moved into a
#   scratch folder and user= dropped (it checks that folders and users exist).
# Prints one line per check; a tool that is missing is reported, not failed. Exit 1 if a check
# that ran failed.
set -uo pipefail
cd "$(dirname "$0")/.."

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=0

report() { # NAME STATUS [OUTPUT]
    echo "$2: $1"
    if [ "$2" = "FAILED" ]; then
        failed=1
        [ -n "${3:-}" ] && echo "$3" | sed 's/^/    /'
    fi
    return 0
}

# docker compose needs the env file the stack names; an empty one stands in for the operator's.
mkdir -p "$scratch/repo"
cp -r deploy "$scratch/repo/"
touch "$scratch/repo/deploy/deepfactor.env"
if docker compose version >/dev/null 2>&1; then
    if out=$(docker compose -f "$scratch/repo/deploy/docker-compose.yml" config --quiet 2>&1); then
        report "docker compose config" ok
    else
        report "docker compose config" FAILED "$out"
    fi
elif command -v docker-compose >/dev/null 2>&1; then
    sed -i '/^name: /d' "$scratch/repo/deploy/docker-compose.yml"
    if out=$(docker-compose -f "$scratch/repo/deploy/docker-compose.yml" config --quiet 2>&1); then
        report "docker-compose (v1) config, without name:" ok
    else
        report "docker-compose (v1) config, without name:" FAILED "$out"
    fi
else
    report "docker compose config" "not run (no docker compose here)"
fi

if command -v systemd-analyze >/dev/null 2>&1 && [ -d /lib/systemd/system ]; then
    root="$scratch/root"
    mkdir -p "$root/opt/deepfactor/venv/bin" "$root/usr/bin" "$root/etc/systemd/system" \
        "$root/lib/systemd"
    for binary in opt/deepfactor/venv/bin/deepfactor usr/bin/redis-server; do
        printf '#!/bin/sh\n' >"$root/$binary"
        chmod +x "$root/$binary"
    done
    cp -r /lib/systemd/system "$root/lib/systemd/"
    cp deploy/systemd/* "$root/etc/systemd/system/"
    out=$(systemd-analyze --root="$root" verify --man=no deepfactor.target deepfactor-up.service \
        deepfactor-redis.service deepfactor@market-data.service deepfactor@signal.service 2>&1)
    if [ $? -eq 0 ] && [ -z "$out" ]; then
        report "systemd-analyze verify" ok
    else
        report "systemd-analyze verify" FAILED "$out"
    fi
else
    report "systemd-analyze verify" "not run (no systemd-analyze here)"
fi

python=${PYTHON:-python3}
if "$python" -c "import supervisor" >/dev/null 2>&1; then
    conf="$scratch/supervisord.conf"
    mkdir -p "$scratch/state" "$scratch/log"
    sed -e "s#/var/lib/deepfactor#$scratch/state#g" -e "s#/var/log/deepfactor#$scratch/log#g" \
        -e '/^user=/d' deploy/supervisord.conf >"$conf"
    if out=$("$python" - "$conf" 2>&1 <<'EOF'
import sys
from supervisor.options import ServerOptions

options = ServerOptions()
options.realize(args=["-c", sys.argv[1]])
programs = [p.name for group in options.process_group_configs for p in group.process_configs]
assert len(programs) == 6, programs
EOF
    ); then
        report "supervisord option processing" ok
    else
        report "supervisord option processing" FAILED "$out"
    fi
else
    report "supervisord option processing" "not run (no supervisor package for $python)"
fi

exit "$failed"
