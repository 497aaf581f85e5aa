#!/usr/bin/env bash
# Builds the CPU container image from the Dockerfile with podman and checks that the
# runtime image serves, on a Debian machine that reaches Debian's package archive but
# no container registry (and may have no cgroups for an OCI runtime). Not part of CI:
# it needs root and takes about half an hour on 2 cores (the image build compiles
# clipserve from scratch and runs the unit tests).
#
#   sudo bash scripts/image-check.sh [TAG]      # default TAG: localhost/clipserve:check
#
# 1. Base images: when debian:bookworm is not in podman's store (no registry to pull
#    it from), it is made with debootstrap (minbase) from deb.debian.org and imported;
#    debian:bookworm-slim is tagged to the same image.
# 2. `podman build --isolation chroot --format docker`: RUN steps run in a chroot, so
#    the build needs neither cgroups nor crun; --network host lets install-deps.sh
#    reach the archive; the docker format keeps the HEALTHCHECK (podman's default OCI
#    format drops it, with a warning).
#    The shared test data comes from $CLIPSERVE_SHARED_DIR (default ../shared).
# 3. The runtime image is checked from the outside, as `docker run` would run it:
#    its user is numeric and not root; its root filesystem is mounted read-only and
#    its ENTRYPOINT runs in a chroot as that user (own mount namespace with /proc,
#    /dev and a tmpfs /tmp, host network) with --metrics_port; then its HEALTHCHECK
#    command must pass, clip_client must embed a text and /readyz must answer 200.
set -euo pipefail
cd "$(dirname "$0")/.."

tag=${1:-localhost/clipserve:check}
shared=${CLIPSERVE_SHARED_DIR:-../shared}
base=docker.io/library/debian

for tool in podman debootstrap unshare curl; do
  command -v "$tool" >/dev/null || { echo "image-check: needs $tool" >&2; exit 1; }
done
[ -d "$shared/images" ] || { echo "image-check: no shared test data in $shared" >&2; exit 1; }

if ! podman image exists "$base:bookworm"; then
  root=$(mktemp -d)
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian
  tar -C "$root" -c . | podman import - "$base:bookworm"
  rm -rf "$root"
fi
podman image exists "$base:bookworm-slim" || podman tag "$base:bookworm" "$base:bookworm-slim"

podman build --isolation chroot --network host --format docker \
  --build-context shared="$shared" -t "$tag" .

user=$(podman image inspect --format '{{.Config.User}}' "$tag")
uid=${user%%:*}
case "$uid" in
  '' | 0 | *[!0-9]*) echo "image-check: image user '$user' is not a numeric non-root uid" >&2
                     exit 1 ;;
esac
entrypoint=$(podman image inspect --format '{{range .Config.Entrypoint}}{{.}} {{end}}' "$tag")
health=$(podman image inspect --format '{{range .Config.Healthcheck.Test}}{{.}} {{end}}' "$tag")
case "$health" in
  'CMD '*) health=${health#CMD } ;;
  *) echo "image-check: unexpected HEALTHCHECK '$health'" >&2; exit 1 ;;
esac

mnt=$(podman image mount "$tag")
trap 'podman image unmount "$tag" >/dev/null' EXIT
metrics_port=19090
log=$(mktemp)
# Everything below runs in a private mount namespace, so the mounts vanish with it.
# shellcheck disable=SC2086  # the entrypoint and health command are word lists
unshare --mount --propagation private bash -euo pipefail -c '
  mnt=$1 user=$2 entrypoint=$3 health=$4 metrics_port=$5 log=$6
  mount --bind "$mnt" "$mnt" && mount -o remount,bind,ro "$mnt"
  mount -t proc proc "$mnt/proc"
  mount --rbind /dev "$mnt/dev"
  mount -t tmpfs tmpfs "$mnt/tmp"
  in_image() { chroot --userspec="$user" "$mnt" "$@"; }
  in_image $entrypoint --metrics_port="$metrics_port" >"$log" 2>&1 &
  server=$!
  trap "kill $server 2>/dev/null; wait $server 2>/dev/null || true" EXIT
  for _ in $(seq 120); do
    if in_image $health >/dev/null 2>&1; then break; fi
    kill -0 "$server" 2>/dev/null || { echo "image-check: server exited" >&2; cat "$log" >&2; exit 1; }
    sleep 1
  done
  in_image $health
  # Captured whole: piped into head, clip_client could die of SIGPIPE under pipefail.
  embedding=$(in_image clip_client embed-text "a photo of a cat")
  echo "${embedding:0:300}"
  test "$(curl -s -o /dev/null -w "%{http_code}" "http://localhost:$metrics_port/readyz")" = 200
  echo "image-check: HEALTHCHECK, embed-text and /readyz passed as uid $user"
' image-check "$mnt" "$user" "$entrypoint" "$health" "$metrics_port" "$log"
