"""Biomarker fidelity of accelerated reconstructions (``cardiomm bench fidelity`` and the demo).

* :mod:`cardiomm.fidelity.methods`: every reconstruction method behind one call;
* :mod:`cardiomm.fidelity.runner`: undersample -> reconstruct -> segment -> biomarkers, scored
  against the fully sampled reference (the images of simulated scans also against their noiseless truth);
* :mod:`cardiomm.fidelity.agreement`: Dice per class, Bland-Altman statistics;
* :mod:`cardiomm.fidelity.report`: figures, HTML and Markdown.
"""

#: what ``run_fidelity(frames=...)`` and ``--segment-frames`` segment (:mod:`cardiomm.fidelity.runner`);
#: kept here, free of heavy imports, for the command-line parsers
FRAME_MODES = ("ed-es-stack", "ed-es", "all")
FRAME_MODES_HELP = ("ed-es-stack: ED and ES are the frames of largest/smallest LV volume of the whole reference stack, "
                    "reconstructions are segmented at them only; ed-es: found on the reference's mid slice alone "
                    "(fastest); all: every frame of every stack")
