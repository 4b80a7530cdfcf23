# Artifact state scripts reach the .mender file through the deploy directory: make sure they
# are there before the artifact is written (an image of your own needs the same line).
do_image_mender[depends] += "vigil-mender-state-scripts:do_deploy"
