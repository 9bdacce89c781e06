#!/usr/bin/env bash
# The units in contrib/systemd under a real systemd: Debian 12's (252), booted in a container
# (systemd-nspawn over an overlay of /, with its own loopback), as ../shared/systemd-in-ci.md
# describes. What the README's systemd section says, checked against systemd itself:
#   - `systemctl start` returns once the app answers (Type=notify);
#   - 5 reloads under load: 0 failed; a reload to a build that fails makes `systemctl reload`
#     fail, the journal has that build's last lines on stderr, and the old generation serves on;
#   - a build or `--upgrade` started by hand as root, outside the unit, names the unit to
#     reload (`systemctl reload app.service`);
#   - `ExecReload=risefrontctl upgrade $MAINPID` (runs none of the app's code) reloads, and
#     fails the reload when the new build fails;
#   - `systemctl stop` with a slow request in flight: it completes, the unit ends in success;
#   - the fd-store unit: the front killed with -9 during its own re-exec, then again (not
#     re-executing), each under load, 0 failed (252 needs RISEFRONT_FDSTORE=1, which the unit
#     sets);
#   - socket activation: 2 reloads and a kill -9 of the front under load, 0 failed.
# With SYSTEMD_VERSION=254, the container runs systemd 254 from bookworm-backports (installed in
# the overlay only, from the mirror the host's apt uses) and these are checked too:
#   - app-notify-reload.service (Type=notify-reload): start, 5 reloads under load, 0 failed;
#     a reload to a failing build fails `systemctl reload`;
#   - the fd store as systemd 254 announces it ($FDSTORE), without RISEFRONT_FDSTORE.
# Needs root (mounts, a container). Usage: ci/systemd-test.sh [APP [CTL]] (defaults: the debug
# builds of the hello example and of risefrontctl, which `cargo test --all-targets` builds).
set -euo pipefail
cd "$(dirname "$0")/.."

app=${1:-target/debug/examples/hello}
ctl=${2:-target/debug/risefrontctl}
version=${SYSTEMD_VERSION:-252}
log() { echo "[systemd-test $version] $*"; }
fail() {
    log "FAILED: $*"
    if [ -n "${C:-}" ]; then
        nsenter -t "$C" -a journalctl --no-pager -n 60 2>/dev/null | sed 's/^/  journal: /' || true
    fi
    exit 1
}

[ "$(id -u)" = 0 ] || fail "needs root: it mounts an overlay and boots a container"
case "$version" in 252 | 254) ;; *) fail "SYSTEMD_VERSION=$version: 252 (Debian 12's) or 254 (bookworm-backports)" ;; esac
[ -x "$app" ] || fail "$app is missing: build it first (cargo build --example hello)"
[ -x "$ctl" ] || fail "$ctl is missing: build it first (cargo build --bin risefrontctl)"

export DEBIAN_FRONTEND=noninteractive
if ! command -v systemd-nspawn >/dev/null 2>&1; then
    # Pinned to the installed systemd, so apt does not upgrade the host's; no recommends
    # (libnss-mymachines would edit /etc/nsswitch.conf).
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends \
        "systemd-container=$(dpkg-query -W -f='${Version}' systemd)" >/dev/null
fi
if ! command -v curl >/dev/null 2>&1; then
    apt-get install -y -qq curl >/dev/null
fi

base=$(mktemp -d /tmp/risefront-systemd.XXXXXX)
root=$base/root
NS=
C=
teardown() {
    if [ -n "$NS" ] && kill -0 "$NS" 2>/dev/null; then
        kill -TERM "$NS" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$NS" 2>/dev/null || break; sleep 0.1; done
        kill -TERM "$NS" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$NS" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$NS" 2>/dev/null || true
        wait "$NS" 2>/dev/null || true
    fi
    umount "$root" 2>/dev/null || umount -l "$root" 2>/dev/null || true
    umount "$base" 2>/dev/null || umount -l "$base" 2>/dev/null || true
    rm -rf "$base" /run/systemd/nspawn /run/systemd/nspawn-root 2>/dev/null || true
}
trap teardown EXIT

mount -t tmpfs -o size=4g tmpfs "$base"
mkdir -p "$base/upper" "$base/work" "$root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$root"
if [ "$version" = 254 ]; then
    # Inside the overlay only: the host's systemd stays as it is.
    mirror=$(sed -n 's/^URIs: *\(http[^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
    mirror=${mirror:-$(sed -n 's/^deb *\(http[^ ]*\/debian\) .*/\1/p' /etc/apt/sources.list 2>/dev/null | head -1)}
    mirror=${mirror:-http://deb.debian.org/debian}
    echo "deb $mirror bookworm-backports main" >"$root/etc/apt/sources.list.d/risefront-backports.list"
    systemd-nspawn -D "$root" --register=no --keep-unit --link-journal=no --pipe sh -c \
        'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -t bookworm-backports systemd systemd-container >/dev/null' \
        >"$base/apt.log" 2>&1 || fail "installing systemd 254 in the container: $(tail -5 "$base/apt.log")"
    rm -rf /run/systemd/nspawn /run/systemd/nspawn-root 2>/dev/null || true
fi
install -m755 "$app" "$root/usr/local/bin/app"
install -m755 "$ctl" "$root/usr/local/bin/risefrontctl"
useradd -R "$root" --system --no-create-home --shell /usr/sbin/nologin app 2>/dev/null || true
cp contrib/systemd/*.service contrib/systemd/*.socket "$root/etc/systemd/system/"
# Socket activation wants the same stem for both units.
cp contrib/systemd/app.socket "$root/etc/systemd/system/appsock.socket"
sed 's/app\.socket/appsock.socket/g' contrib/systemd/app-socket.service \
    >"$root/etc/systemd/system/appsock.service"
# The failing build of the reload check: the hello example fails while this file exists.
for unit in app app-fdstore app-notify-reload appsock; do
    mkdir -p "$root/etc/systemd/system/$unit.service.d"
    printf '[Service]\nEnvironment=HELLO_FAIL_FILE=/srv/hello-fail\n' \
        >"$root/etc/systemd/system/$unit.service.d/test.conf"
done
# The load, run in the container's network (a host program, as curl is): one line per
# request, its status (000: none).
cat >"$base/load" <<'LOAD'
#!/bin/bash
end=$(( $(date +%s) + $1 ))
for _ in $(seq 1 "$2"); do
    ( while [ "$(date +%s)" -lt "$end" ]; do
        curl -s -o /dev/null -w '%{http_code}\n' --max-time 10 http://127.0.0.1:8080/
    done ) &
done
wait
LOAD
chmod +x "$base/load"
# In the container: has front $1 re-execute (risefrontctl, as the unit's user) and kills it
# with -9 the moment its new image exists (the environment carries the old image's state).
# perl (Debian's perl-base) looks without a process per look, so the kill lands within
# microseconds of the exec, before the new image has set up its runtime.
cat >"$root/usr/local/bin/reexec-and-kill" <<'KILL'
#!/bin/bash
runuser -u app -- /usr/local/bin/risefrontctl reexec "$1" >/tmp/reexec.out 2>&1 &
perl -e '
    my ($pid, $end) = ($ARGV[0], time + 30);
    while (time < $end) {
        open(my $f, "<", "/proc/$pid/environ") or next;
        local $/;
        my $env = <$f>;
        if (grep { /^RISEFRONT_FRONT_STATE=/ } split /\0/, $env) { kill 9, $pid; exit 0 }
    }
    exit 1;' "$1" || { cat /tmp/reexec.out; exit 1; }
KILL
chmod +x "$root/usr/local/bin/reexec-and-kill"

systemd-nspawn --boot -D "$root" --register=no --keep-unit --link-journal=no \
    --private-network --console=passive >"$base/nspawn.log" 2>&1 &
NS=$!
# The container's PID 1 is nspawn's child once it runs systemd (it forks in between).
for _ in $(seq 1 200); do
    C=$(pgrep -P "$NS" || true)
    if [ -n "$C" ] && [ "$(cat "/proc/$C/comm" 2>/dev/null)" = systemd ]; then
        break
    fi
    C=
    sleep 0.1
done
[ -n "$C" ] || fail "the container did not start: $(cat "$base/nspawn.log")"
ctr() { nsenter -t "$C" -a "$@"; }
ctrnet() { nsenter -t "$C" -n "$@"; }
# Until its bus is up, systemctl cannot even ask.
state=
for _ in $(seq 1 300); do
    state=$(timeout 120 nsenter -t "$C" -a systemctl is-system-running --wait 2>/dev/null || true)
    case "$state" in running | degraded) break ;; esac
    sleep 0.2
done
running=$(ctr systemctl --version | head -1 | cut -d' ' -f2)
log "systemd $running in the container: $state"
case "$state" in running | degraded) ;; *) fail "the container's systemd is $state" ;; esac
[ "$running" = "$version" ] || fail "systemd $running runs in the container, not $version"

get() { ctrnet curl -s --max-time 10 "http://127.0.0.1:8080$1"; }
generation() { get / | sed -n 's/^hello from generation \([0-9]*\) .*/\1/p'; }
# Runs the load for $1 s in the background; `finish_load` waits and checks it.
start_load() { (ctrnet "$base/load" "$1" 4 >"$base/load.out") & LOAD_PID=$!; }
finish_load() {
    wait "$LOAD_PID"
    local ok total
    ok=$(grep -c '^200$' "$base/load.out" || true)
    total=$(wc -l <"$base/load.out")
    log "$1: $ok of $total requests answered 200"
    [ "$total" -gt 0 ] && [ "$ok" = "$total" ] || fail "$1: $((total - ok)) of $total failed"
}

# Type=notify: start returns once generation 1 answers, without any retry here.
ctr systemctl start app
[ "$(ctr systemctl show app -p Type --value)" = notify ] || fail "app.service is not Type=notify"
[ "$(generation)" = 1 ] || fail "not answering right after systemctl start"
log "systemctl start: answering at once"

start_load 8
sleep 1
for n in 2 3 4 5 6; do
    ctr systemctl reload app || fail "reload $n failed"
    sleep 0.5
done
finish_load "5 reloads"
[ "$(generation)" = 6 ] || fail "generation $(generation) serves after 5 reloads, not 6"

# A reload to a build that fails ($1: how the reload runs) must fail, and generation $2 serve on
# ($3: the unit, app by default).
failed_reload() {
    local said
    said=$(journal_count "${3:-app}" '| HELLO_FAIL=exit: exiting before serving')
    ctr sh -c 'echo exit > /srv/hello-fail'
    if ctr systemctl reload "${3:-app}" 2>/dev/null; then
        fail "systemctl reload ($1) succeeded although the new build failed"
    fi
    ctr rm -f /srv/hello-fail
    [ "$(generation)" = "$2" ] || fail "a failed reload ($1) left generation $(generation) serving"
    # Why, in the reload's own journal lines: the failed build's last lines on stderr (journald
    # writes them a moment after the reload returned).
    in_journal "${3:-app}" '| HELLO_FAIL=exit: exiting before serving' "$said" ||
        fail "a failed reload ($1): the failed build's last lines are not in the journal"
}
# How many lines of unit $1's journal match $2.
journal_count() { ctr journalctl -u "$1" --no-pager 2>/dev/null | grep -c -- "$2" || true; }
# Whether unit $1's journal has more than $3 (default 0) lines matching $2 within 10 s.
in_journal() {
    for _ in $(seq 1 50); do
        [ "$(journal_count "$1" "$2")" -gt "${3:-0}" ] && return 0
        sleep 0.2
    done
    return 1
}
failed_reload "the app with RISEFRONT_UPGRADE=1" 6
ctr systemctl status app --no-pager 2>/dev/null | grep -q "last upgrade failed" ||
    fail "systemctl status does not say the upgrade failed"
log "a reload to a failing build: systemctl reload failed, the journal has why, generation 6 serves on"

# From a shell, as root and outside the unit (no RuntimeDirectory=, another user): a build or
# --upgrade started by hand finds no front where it looks, and says which unit to reload.
out=$(ctr timeout 60 /usr/local/bin/app 127.0.0.1:8080 2>&1 || true)
echo "$out" | grep -q 'systemctl reload app.service' ||
    fail "a build started by hand does not point to systemctl reload: $out"
out=$(ctr timeout 60 /usr/local/bin/app --upgrade 127.0.0.1:8080 2>&1 || true)
echo "$out" | grep -q 'systemctl reload app.service' ||
    fail "--upgrade started by hand does not point to systemctl reload: $out"
[ "$(generation)" = 6 ] || fail "a build started by hand changed what serves"
log "a build and --upgrade started by hand as root name the unit: systemctl reload app.service"

# A reload that runs none of the app's code: ExecReload= through risefrontctl and $MAINPID.
printf '[Service]\nExecReload=\nExecReload=/usr/local/bin/risefrontctl upgrade $MAINPID\n' \
    >"$root/etc/systemd/system/app.service.d/ctl.conf"
ctr systemctl daemon-reload
ctr systemctl reload app || fail "reload through risefrontctl failed"
# Generation 7 was the failed build above: this reload starts generation 8.
[ "$(generation)" = 8 ] || fail "generation $(generation) serves after a reload through risefrontctl"
failed_reload "through risefrontctl" 8
log "ExecReload=risefrontctl upgrade \$MAINPID: reloads, and a failed upgrade fails the reload"

(get '/slow?ms=3000' >"$base/slow.out") &
slow=$!
sleep 0.5
ctr systemctl stop app
wait "$slow" || fail "the slow request in flight at systemctl stop failed"
grep -q "hello from generation 8" "$base/slow.out" || fail "slow request: $(cat "$base/slow.out")"
[ "$(ctr systemctl show app -p Result --value)" = success ] || fail "app.service did not stop cleanly"
log "systemctl stop: the slow request in flight completed"

if [ "$version" = 254 ]; then
    # Type=notify-reload, as shipped: ExecReload= through risefrontctl, ReloadSignal=SIGCONT.
    ctr systemctl start app-notify-reload
    [ "$(ctr systemctl show app-notify-reload -p Type --value)" = notify-reload ] ||
        fail "app-notify-reload.service is not Type=notify-reload"
    [ "$(generation)" = 1 ] || fail "notify-reload: not answering right after systemctl start"
    start_load 8
    sleep 1
    for n in 2 3 4 5 6; do
        ctr systemctl reload app-notify-reload || fail "notify-reload: reload $n failed"
        sleep 0.5
    done
    finish_load "notify-reload, 5 reloads"
    [ "$(generation)" = 6 ] || fail "notify-reload: generation $(generation) serves after 5 reloads"
    failed_reload "Type=notify-reload" 6 app-notify-reload
    ctr systemctl status app-notify-reload --no-pager 2>/dev/null | grep -q "last upgrade failed" ||
        fail "notify-reload: systemctl status does not say the upgrade failed"
    in_journal app-notify-reload 'risefrontctl.*| HELLO_FAIL=exit: exiting before serving' ||
        fail "notify-reload: the failed build's last lines are not in risefrontctl's journal lines"
    ctr systemctl stop app-notify-reload
    log "Type=notify-reload: 5 reloads, 0 failed; a failed upgrade fails systemctl reload and the journal has why"

    # 254 announces the store ($FDSTORE): nothing to opt in to.
    printf '[Service]\nEnvironment=RISEFRONT_FDSTORE=0\n' \
        >"$root/etc/systemd/system/app-fdstore.service.d/announced.conf"
    ctr systemctl daemon-reload
fi

ctr systemctl start app-fdstore
ctr journalctl -u app-fdstore --no-pager 2>/dev/null | grep -q "stored the socket" ||
    fail "the front did not store its socket with systemd"

# The front killed with -9 in the middle of its own re-exec (`risefrontctl reexec`, as the
# unit's user): the moment the new image exists (its environment carries the old one's state),
# before it has taken over what it was handed. systemd restarts it from the store.
start_load 6
sleep 1
pid=$(ctr systemctl show app-fdstore -p MainPID --value)
ctr /usr/local/bin/reexec-and-kill "$pid" >"$base/reexec.out" 2>&1 ||
    fail "the front did not re-execute: $(cat "$base/reexec.out")"
finish_load "fd store, front killed with -9 during its re-exec"
in_journal app-fdstore "front re-executing into" ||
    fail "the journal does not say the front began to re-execute"
for _ in $(seq 1 100); do
    [ "$(ctr systemctl show app-fdstore -p NRestarts --value)" = 1 ] && break
    sleep 0.1
done
[ "$(ctr systemctl show app-fdstore -p NRestarts --value)" = 1 ] ||
    fail "the front killed during its re-exec was not restarted"
[ -n "$(generation)" ] || fail "no answer after the front killed during its re-exec restarted"
resumed=$(journal_count app-fdstore "front re-executed into")
log "killed during its re-exec (the new image had logged taking over: $resumed times): restarted, serving"

start_load 6
sleep 1.5
ctr kill -9 "$(ctr systemctl show app-fdstore -p MainPID --value)"
finish_load "fd store, front killed with -9"
[ "$(ctr systemctl show app-fdstore -p NRestarts --value)" = 2 ] || fail "the front was not restarted"
ctr systemctl stop app-fdstore

ctr systemctl start appsock.socket
[ -n "$(generation)" ] || fail "socket activation: no answer"
start_load 6
sleep 1
ctr systemctl reload appsock || fail "socket activation: reload failed"
sleep 1
ctr systemctl reload appsock || fail "socket activation: second reload failed"
sleep 1
ctr kill -9 "$(ctr systemctl show appsock -p MainPID --value)"
finish_load "socket activation, 2 reloads and a kill -9 of the front"
ctr systemctl stop appsock.service appsock.socket

log "passed"
