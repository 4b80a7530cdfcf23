# With meta-rauc: rauc-mark-good.service marks the slot good after boot-complete.target, which
# vigil-boot-check.service holds back until vigil runs.
RDEPENDS:${PN} += "vigil-boot-check"
