# With meta-mender: the ArtifactCommit_Enter script that rolls an update back unless vigil runs.
RDEPENDS:${PN} += "vigil-mender-state-scripts"
