# nooelint: oelint.var.suggestedvar.CVE_PRODUCT - an image has no product of its own to match CVEs to
SUMMARY = "A bootable image running vigil"
DESCRIPTION = "A minimal systemd image with vigil (packagegroup-vigil). The distribution makes systemd the init manager (INIT_MANAGER, set by the kas file): an image cannot."
HOMEPAGE = "https://example.invalid/vigil"
BUGTRACKER = "https://example.invalid/vigil/issues"
SECTION = "images"
LICENSE = "MIT"

inherit core-image features_check

# vigil.service is a systemd unit (Type=notify, watchdog, StateDirectory).
REQUIRED_DISTRO_FEATURES = "systemd"

IMAGE_INSTALL = "packagegroup-core-boot packagegroup-vigil ${CORE_IMAGE_EXTRA_INSTALL}"
IMAGE_LINGUAS = ""
