# Podman/buildah settings that work on a machine without a Docker engine (sourced by the
# container tests; see ../shared/notes/containers.md): runc instead of crun, overlay storage
# in a scratch folder, raised file limits.
CONTAINER_SCRATCH=${CONTAINER_SCRATCH:-/tmp/image-services-containers}
mkdir -p "$CONTAINER_SCRATCH"
cat > "$CONTAINER_SCRATCH/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
CONF
cat > "$CONTAINER_SCRATCH/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$CONTAINER_SCRATCH/graph"
runroot = "$CONTAINER_SCRATCH/run"
CONF
export CONTAINERS_CONF="$CONTAINER_SCRATCH/containers.conf"
export CONTAINERS_STORAGE_CONF="$CONTAINER_SCRATCH/storage.conf"
export BUILDAH_ISOLATION=chroot
