SUMMARY = "Counts a boot as good only once vigil runs (RAUC, Mender)"
DESCRIPTION = "A check that succeeds once vigil.service is active and fails when it failed or did not start in time: a unit before boot-complete.target and required by it (meta-rauc's rauc-mark-good waits for that target), and the script Mender's ArtifactCommit_Enter state script runs. The update integrations in dynamic-layers/ install it."
HOMEPAGE = "https://example.invalid/vigil"
BUGTRACKER = "https://example.invalid/vigil/issues"
SECTION = "admin"
# Part of vigil: its CVEs are vigil's.
CVE_PRODUCT = "vigil"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://vigil-boot-check;beginline=2;endline=2;md5=653b254f286b881bdce1d14afdede628"

SRC_URI = "file://vigil-boot-check \
           file://vigil-boot-check.service \
"
S = "${WORKDIR}"

inherit allarch systemd

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    install -d ${D}${libexecdir}
    install -m 0755 ${S}/vigil-boot-check ${D}${libexecdir}/
    install -d ${D}${systemd_system_unitdir}
    sed -e 's#@LIBEXECDIR@#${libexecdir}#' ${S}/vigil-boot-check.service \
        > ${D}${systemd_system_unitdir}/vigil-boot-check.service
    chmod 0644 ${D}${systemd_system_unitdir}/vigil-boot-check.service
}

SYSTEMD_SERVICE:${PN} = "vigil-boot-check.service"
RDEPENDS:${PN} = "vigil"
