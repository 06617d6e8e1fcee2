#!/usr/bin/env bash
# Build the service image with buildah (chroot isolation, no Docker engine) and check
# the running container end to end: health, one offline enhancement inside it, one
# WebRTC session from the host (deploy/check_container.py).
#
#   nice -n 19 bash deploy/build_and_check.sh          # as root; a few minutes
#
# Env: IMAGE (percepnet:latest), BASE_IMAGE (made here with debootstrap when absent:
# localhost/debian:bookworm-slim), MIRROR (Debian mirror for debootstrap), PORT (18080),
# CA_BUNDLE (host CA certs mounted for pip in the build; skipped when absent).
# Needs: buildah, debootstrap (apt-get install -y buildah debootstrap), python3 with the
# repository's [server] extra on the host (for the WebRTC check).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-percepnet:latest}
BASE_IMAGE=${BASE_IMAGE:-localhost/debian:bookworm-slim}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
PORT=${PORT:-18080}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
WORK=$(mktemp -d /tmp/percepnet-image.XXXXXX)
CONTAINER=""
SERVER_PID=""

log() { printf '[build_and_check] %s\n' "$*" >&2; }
descendants() {  # process ids under $1 (the buildah run process), deepest last
  local child
  for child in $(pgrep -P "$1" 2>/dev/null); do echo "$child"; descendants "$child"; done
}
service_main() {  # the container's main process: percepnet-server itself, not buildah's
  local pid       # run / chroot-runtime / chroot-exec processes above it
  for pid in $(descendants "$SERVER_PID"); do
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "python3 .*percepnet-server"; then
      echo "$pid"; return 0
    fi
  done
  return 1
}
stop_server() {  # SIGTERM (the service drains), then make sure the whole tree is gone
  # Like `docker stop`: SIGTERM to the service's main process only (it forwards to its
  # workers). Signalling buildah's own processes too may let them tear the container down
  # while the workers still drain.
  local pids main
  pids="$SERVER_PID $(descendants "$SERVER_PID")"
  main=$(service_main) || main=$pids
  log "SIGTERM to $main"
  # shellcheck disable=SC2086
  kill -TERM $main 2>/dev/null || true
  for _ in $(seq 150); do
    # shellcheck disable=SC2086
    kill -0 $pids 2>/dev/null || return 0
    sleep 0.1
  done
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  return 1
}
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    stop_server || true
  fi
  [ -n "$CONTAINER" ] && buildah rm "$CONTAINER" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

for tool in buildah debootstrap python3; do
  command -v "$tool" >/dev/null || { log "missing $tool (apt-get install -y buildah debootstrap)"; exit 2; }
done

# 1. A local Debian bookworm base image, when no registry is reachable.
if ! buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
  log "making $BASE_IMAGE with debootstrap from $MIRROR"
  debootstrap --variant=minbase bookworm "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log"
  # what debian:bookworm-slim leaves out too: package cache and lists, docs, man pages, locales
  rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/* \
    "$WORK"/rootfs/usr/share/doc/* "$WORK"/rootfs/usr/share/man/* "$WORK"/rootfs/usr/share/locale/*
  tar -C "$WORK/rootfs" -cf "$WORK/rootfs.tar" .
  rm -rf "$WORK/rootfs"
  base=$(buildah from scratch)
  buildah add "$base" "$WORK/rootfs.tar" / >/dev/null
  buildah config --cmd /bin/bash \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$base"
  buildah commit -q "$base" "$BASE_IMAGE" >/dev/null
  buildah rm "$base" >/dev/null
  rm -f "$WORK/rootfs.tar"
fi

# 2. The image. The model in models/ is baked in; without it the service needs
#    --unity-gains and the offline check is skipped.
MODEL=models/percepnet-int8.onnx
mkdir -p models
mounts=()
[ -f "$CA_BUNDLE" ] && mounts=(-v "$CA_BUNDLE:/hostca.crt:ro")
log "building $IMAGE on $BASE_IMAGE"
t0=$(date +%s)
buildah bud --isolation chroot --network host --format docker --layers=false \
  --build-arg "BASE_IMAGE=$BASE_IMAGE" "${mounts[@]}" -t "$IMAGE" . >"$WORK/build.log" 2>&1 \
  || { tail -40 "$WORK/build.log" >&2; exit 1; }
log "built in $(( $(date +%s) - t0 )) s; size: $(buildah images --format '{{.Size}}' "$IMAGE" | head -1)"
buildah inspect --type image --format '{{.Docker.Config.Healthcheck.Test}}' "$IMAGE" \
  | grep -q healthz || { log "image has no HEALTHCHECK on /healthz"; exit 1; }
user=$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$IMAGE")
[ -n "$user" ] && [ "${user%%:*}" != 0 ] && [ "${user%%:*}" != root ] \
  || { log "image runs as root ($user)"; exit 1; }

# 3. Run it (host network: WebRTC media on ephemeral UDP ports).
CONTAINER=$(buildah from "$IMAGE")
run_in() { buildah run --isolation chroot --network host "$@"; }
if buildah run --isolation chroot "$CONTAINER" -- python3 -c "import torch" 2>/dev/null; then
  log "torch is importable in the image"; exit 1
fi
extra_env=()
if [ ! -f "$MODEL" ]; then
  log "no $MODEL: serving with unity gains"
  extra_env=(--env PERCEPNET_UNITY_GAINS=1)
fi
if curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" 2>/dev/null; then
  log "port $PORT is already serving: stop that first (or set PORT)"; exit 1
fi
t0=$(date +%s.%N)
run_in --env "PERCEPNET_PORT=$PORT" --env PERCEPNET_WORKERS=2 "${extra_env[@]}" "$CONTAINER" \
  -- percepnet-server >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 300); do
  if curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; then break; fi
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; exit 1; }
  sleep 0.1
done
ready=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null || { cat "$WORK/server.log" >&2; exit 1; }
log "container ready in $ready s (start to /readyz 200)"

# 4. Health: from the host and with the image's own HEALTHCHECK command inside.
curl -fsS "http://127.0.0.1:$PORT/healthz"; echo
health_cmd=$(buildah inspect --type image --format '{{index .Docker.Config.Healthcheck.Test 3}}' "$IMAGE")
run_in --env "PERCEPNET_PORT=$PORT" "$CONTAINER" -- python3 -c "$health_cmd"
log "healthcheck command passed inside the container"

# 5. One offline enhancement inside the container.
if [ -f "$MODEL" ]; then
  python3 - "$WORK/noisy.wav" <<'PY'
import sys, numpy as np, soundfile as sf
from server.clips import mix_at_snr, speech_like, white_noise
clean = speech_like(3.0, seed=11)
sf.write(sys.argv[1], mix_at_snr(clean, white_noise(3.0, 1.0, seed=12), 5.0), 48000, subtype="PCM_16")
PY
  buildah copy --chown 10001:10001 "$CONTAINER" "$WORK/noisy.wav" /tmp/in/noisy.wav >/dev/null
  run_in "$CONTAINER" -- percepnet enhance /tmp/in -o /tmp/out
  run_in "$CONTAINER" -- python3 -c "
import soundfile as sf, numpy as np
x, _ = sf.read('/tmp/in/noisy.wav'); y, rate = sf.read('/tmp/out/noisy.wav')
assert rate == 48000 and len(y) == len(x), (rate, len(x), len(y))
print(f'offline: {len(y)/rate:.2f} s, rms in {20*np.log10(np.std(x)):.1f} dBFS, out {20*np.log10(np.std(y)):.1f} dBFS')
"
  log "offline enhancement inside the container passed"
else
  log "SKIPPED offline enhancement: $MODEL is absent"
fi

# 6. One WebRTC session (and one RTP sidecar session) from the host.
python3 deploy/check_container.py "http://127.0.0.1:$PORT" || { tail -60 "$WORK/server.log" >&2; exit 1; }

# 7. Graceful stop: SIGTERM drains and exits.
stop_server || { log "server did not stop within 15 s of SIGTERM"; exit 1; }
SERVER_PID=""
if curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" 2>/dev/null; then
  log "something still serves port $PORT after the stop"; exit 1
fi
grep -q "worker 0 stopped" "$WORK/server.log" || {
  log "no clean drain in the log; its end:"; tail -40 "$WORK/server.log" >&2; exit 1
}
log "OK: image $IMAGE ($(buildah images --format '{{.Size}}' "$IMAGE" | head -1)), ready in $ready s"
