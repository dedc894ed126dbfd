"""Biomarker fidelity of accelerated reconstructions (``cardiomm bench fidelity`` and the demo).

* :mod:`cardiomm.fidelity.methods`: every reconstruction method behind one call;
* :mod:`cardiomm.fidelity.runner`: undersample -> reconstruct -> segment -> biomarkers, scored
  against the fully sampled reference (the images of simulated scans also against their noiseless truth);
* :mod:`cardiomm.fidelity.agreement`: Dice per class, Bland-Altman statistics;
* :mod:`cardiomm.fidelity.report`: figures, HTML and Markdown.
"""
