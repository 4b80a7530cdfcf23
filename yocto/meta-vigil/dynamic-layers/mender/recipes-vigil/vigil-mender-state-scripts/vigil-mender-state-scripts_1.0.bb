SUMMARY = "Mender state script: commit an update only once vigil runs"
DESCRIPTION = "An ArtifactCommit_Enter script that runs vigil-boot-check on the updated system: when vigil does not become active, Mender rolls the update back. The script goes into the Mender artifact (through the deploy directory); the package only pulls in vigil-boot-check."
HOMEPAGE = "https://example.invalid/vigil"
BUGTRACKER = "https://example.invalid/vigil/issues"
SECTION = "admin"
# Part of vigil: its CVEs are vigil's.
CVE_PRODUCT = "vigil"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://ArtifactCommit_Enter_50_vigil;beginline=2;endline=2;md5=653b254f286b881bdce1d14afdede628"

SRC_URI = "file://ArtifactCommit_Enter_50_vigil"
S = "${WORKDIR}"

inherit allarch mender-state-scripts

do_compile() {
    install -m 0755 ${S}/ArtifactCommit_Enter_50_vigil ${MENDER_STATE_SCRIPTS_DIR}/
}

ALLOW_EMPTY:${PN} = "1"
RDEPENDS:${PN} = "vigil-boot-check"
