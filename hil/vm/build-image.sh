#!/bin/bash
# Builds the virtual board's disk image for the rig's `vm` target (docs/hil.md, "The virtual
# board"), from Debian 12 packages only: mmdebstrap of bookworm with the distribution's kernel,
# systemd 252 as PID 1, OpenSSH, and what the vigil .deb depends on (the guest has no way to a
# mirror: apt installs the .deb from the packages already there).
#
#   hil/vm/build-image.sh ARCH OUT_DIR      ARCH: amd64 or arm64
#
# OUT_DIR gets root.img (raw ext4, the root filesystem), vmlinuz, initrd.img, id_ed25519 (the
# rig's key, root's only way in) and recipe.sha256. The image is rebuilt only when this
# script's text or ARCH changed since OUT_DIR was made: `vigil-hil run --vm` calls it each run.
# Two calls for the same OUT_DIR take turns (a lock beside it): `make test` starts one in the
# background early, and the rig's call waits for it, then finds the image made.
set -euo pipefail

arch=${1:?usage: build-image.sh ARCH OUT_DIR}
out=${2:?usage: build-image.sh ARCH OUT_DIR}
case $arch in
    amd64) kernel=linux-image-amd64 ;;
    arm64) kernel=linux-image-arm64 ;;
    *) echo "build-image.sh: ARCH is amd64 or arm64, not $arch" >&2; exit 2 ;;
esac
mirror=${VIGIL_VM_MIRROR:-http://deb.debian.org/debian}

mkdir -p "$(dirname "$out")"
exec 9>"$out.lock"
flock 9
recipe=$( (cat "$0"; echo "$arch") | sha256sum | cut -d' ' -f1)
if [ -f "$out/recipe.sha256" ] && [ "$(cat "$out/recipe.sha256")" = "$recipe" ] && [ -f "$out/root.img" ]; then
    exit 0
fi
for tool in mmdebstrap mkfs.ext4; do
    command -v $tool >/dev/null || { echo "build-image.sh: $tool is missing (apt-get install mmdebstrap e2fsprogs)" >&2; exit 1; }
done
if [ "$arch" = arm64 ] && [ "$(dpkg --print-architecture)" != arm64 ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    echo "build-image.sh: an arm64 image needs qemu-user-static's binfmt handler (apt-get install qemu-user-static binfmt-support)" >&2
    exit 1
fi

started=$(date +%s)
rm -rf "$out"
mkdir -p "$out"
work=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
ssh-keygen -q -t ed25519 -N '' -C vigil-hil-vm -f "$out/id_ed25519"

# The guest: systemd as PID 1 with networkd (DHCP from qemu's user network), sshd for the rig,
# the vigil .deb's dependencies (its Depends in appliance/vigil/Cargo.toml, and libssl for the
# aarch64 build's), dmsetup for I/O errors at the block layer, systemd-timesyncd installed but
# masked (the clock stays as the RTC set it until a scenario has it sync from the rig).
packages=(
    "$kernel" initramfs-tools systemd systemd-sysv systemd-resolved udev dbus kmod
    openssh-server iproute2 procps e2fsprogs dmsetup ca-certificates less
    libgstreamer1.0-0 libgstreamer-plugins-base1.0-0 gstreamer1.0-plugins-base
    gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-libav libssl3
    mosquitto-clients systemd-timesyncd
)
mmdebstrap --mode=root --variant=apt --architectures="$arch" --include="$(IFS=,; echo "${packages[*]}")" \
    --dpkgopt='path-exclude=/usr/share/{doc,man,locale,info}/*' \
    --essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" && printf "MODULES=list\nCOMPRESS=gzip\n" > "$1/etc/initramfs-tools/conf.d/vigil-vm.conf" && printf "virtio_pci\nvirtio_blk\nvirtio_net\nvirtio_mmio\next4\n" > "$1/etc/initramfs-tools/modules"' \
    --customize-hook='echo vigil-vm > "$1/etc/hostname"' \
    --customize-hook='printf "/dev/vda / ext4 defaults,errors=remount-ro 0 1\nLABEL=vigil-data /var/lib/vigil ext4 defaults,nofail,x-systemd.device-timeout=20s 0 2\n" > "$1/etc/fstab"' \
    --customize-hook='mkdir -p "$1/var/lib/vigil" "$1/root/.ssh" && chmod 700 "$1/root/.ssh"' \
    --customize-hook="cp '$out/id_ed25519.pub' \"\$1/root/.ssh/authorized_keys\"" \
    --customize-hook='printf "[Match]\nName=en* eth*\n[Network]\nDHCP=yes\n" > "$1/etc/systemd/network/50-rig.network"' \
    --customize-hook='chroot "$1" systemctl enable systemd-networkd systemd-resolved' \
    --customize-hook='chroot "$1" systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer systemd-timesyncd.service getty@tty1.service' \
    --customize-hook='printf "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n" > "$1/etc/ssh/sshd_config.d/vigil-vm.conf"' \
    --customize-hook='rm -f "$1/etc/machine-id" && touch "$1/etc/machine-id"' \
    --customize-hook="cp -L \"\$1/vmlinuz\" '$work/vmlinuz' && cp -L \"\$1/initrd.img\" '$work/initrd.img'" \
    bookworm "$work/root" "$mirror"
mv "$work/vmlinuz" "$work/initrd.img" "$out/"
# Raw ext4 holding the tree, with room for the .deb and its upgrades.
mkfs.ext4 -q -L vigil-root -d "$work/root" "$out/root.img" 3G
echo "$recipe" > "$out/recipe.sha256"
echo "build-image.sh: $arch image built in $(( $(date +%s) - started )) s: $out" >&2
