SUMMARY = "ONNX Runtime's C library for vigil's CPU backend (prebuilt, aarch64)"
DESCRIPTION = "libonnxruntime from Microsoft's aarch64 PyPI wheel of ONNX Runtime, installed in vigil's private library directory as vigil's .deb ships it. vigil loads it at run time (the ort crate's load-dynamic); nothing links it."
HOMEPAGE = "https://onnxruntime.ai/"
BUGTRACKER = "https://github.com/microsoft/onnxruntime/issues"
SECTION = "libs"
# MIT for ONNX Runtime itself; the notices of what it bundles are checksummed with it.
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://onnxruntime/LICENSE;md5=0f7e3b1308cb5c00b372a6e78835732d \
                    file://onnxruntime/ThirdPartyNotices.txt;md5=0273f4458ab21c4f04b2bf7b9c891f6c \
"

# The wheel vigil's tests run under qemu (cross/setup.sh: manylinux_2_28_aarch64, cp311). Only
# its C library is used, which does not depend on the wheel's Python version. Saved as .zip so
# that do_unpack unzips it (and base.bbclass adds unzip-native for that name).
SRC_URI = "https://files.pythonhosted.org/packages/b7/30/103820b32e9dc1d1fcfc5b519fd2de5bd699d25a25895caf5d726350d1b5/onnxruntime-${PV}-cp311-cp311-manylinux_2_28_aarch64.whl;downloadfilename=onnxruntime-${PV}-aarch64.zip;subdir=${BP}"
SRC_URI[sha256sum] = "2303372a85299b6757b0e11e1cbf13e410ddf7e10c37f4b37e99d1c90e7daf7c"

COMPATIBLE_HOST = "aarch64.*-linux"
CVE_PRODUCT = "onnxruntime"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

# vigil's search path starts at /usr/lib/vigil (appliance/infer/src/onnxruntime.rs). The library
# stays out of the system's, so that nothing else picks it up.
do_install() {
    install -d ${D}${libdir}/vigil
    install -m 0644 ${S}/onnxruntime/capi/libonnxruntime.so.${PV} ${D}${libdir}/vigil/
}

FILES:${PN} += "${libdir}/vigil/libonnxruntime.so.*"
# Private to vigil: no other package gets a dependency on it through its soname.
PRIVATE_LIBS = "libonnxruntime.so.1"
# Microsoft's stripped build: nothing to strip or split into -dbg (and no already-stripped QA).
INHIBIT_PACKAGE_STRIP = "1"
INHIBIT_PACKAGE_DEBUG_SPLIT = "1"
