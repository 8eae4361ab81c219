#!/bin/sh
# Run a command inside a rebuilt copy of deploy/dropflow.service's sandbox, for machines where
# systemd is not PID 1 (containers, CI). Not collected by pytest: run it by hand, as root:
#
#   ROOT=/opt/dfcheck tests/sandbox/emulate.sh /opt/dfcheck/.venv/bin/dropflow run --config /opt/dfcheck/config.yaml
#
# ROOT: a checkout installed as the unit expects (`make install`), owned by RUN_AS (nobody by
# default). Its .venv must not live under /root or /home (ProtectHome hides them): build it
# from /usr/bin/python3. Needs util-linux (unshare, setpriv), python3-seccomp and
# systemd-analyze (for the @system-service list). What it rebuilds, setting by setting:
set -e
ROOT=${ROOT:?set ROOT to the checkout}
RUN_AS=${RUN_AS:-nobody}
HERE=$(cd "$(dirname "$0")" && pwd)
# PrivateIPC=true: the IPC namespace; the mount namespace holds the rest.
exec unshare --mount --ipc --propagation private sh -ec '
ROOT=$1; RUN_AS=$2; HERE=$3; shift 3
# ProtectSystem=strict: every mount read-only but the API file systems.
for mp in $(findmnt -rno TARGET | sort -r); do
  case "$mp" in /proc*|/sys*|/dev*) continue;; esac
  mount -n -o remount,bind,ro "$mp" 2>/dev/null || true
done
# ReadWritePaths=/opt/dropflow, then ReadOnlyPaths= inside it.
mount -n --bind "$ROOT" "$ROOT"; mount -n -o remount,bind,rw "$ROOT"
for p in .venv watcher flows config.yaml; do
  mount -n --bind "$ROOT/$p" "$ROOT/$p"; mount -n -o remount,bind,ro "$ROOT/$p"
done
# PrivateTmp=true.
mount -n -t tmpfs -o mode=1777 tmpfs /tmp; mount -n -t tmpfs -o mode=1777 tmpfs /var/tmp
# ProtectHome=true.
for h in /home /root /run/user; do [ -d $h ] && mount -n -t tmpfs -o ro,mode=000 tmpfs $h || true; done
# PrivateDevices=true: the pseudo devices, pts, shm and mqueue only.
mkdir -p /tmp/.dev; mount -n -t tmpfs -o mode=755 tmpfs /tmp/.dev
for d in null zero full random urandom tty; do touch /tmp/.dev/$d; mount -n --bind /dev/$d /tmp/.dev/$d; done
mkdir -p /tmp/.dev/pts /tmp/.dev/shm /tmp/.dev/mqueue
mount -n --bind /dev/pts /tmp/.dev/pts; mount -n --bind /dev/shm /tmp/.dev/shm
ln -s pts/ptmx /tmp/.dev/ptmx; ln -s /proc/self/fd /tmp/.dev/fd
mount -n --move /tmp/.dev /dev
# ProtectProc=invisible; ProtectKernelTunables=true.
mount -n -t proc -o hidepid=invisible proc /proc
mount -n --bind /proc/sys /proc/sys; mount -n -o remount,bind,ro /proc/sys
mount -n -o remount,bind,ro /sys 2>/dev/null || true
# UMask=0027; User=, CapabilityBoundingSet=, AmbientCapabilities=, NoNewPrivileges=true; then
# SystemCallFilter=@system-service and RestrictAddressFamilies= (seccomp_exec.py).
umask 0027
exec setpriv --reuid="$RUN_AS" --regid="$(id -gn "$RUN_AS")" --clear-groups \
  --bounding-set=-all --inh-caps=-all --no-new-privs \
  /usr/bin/python3 "$HERE/seccomp_exec.py" "$@"
' sh "$ROOT" "$RUN_AS" "$HERE" "$@"
