"""Cardiac segmentation and biomarkers.

* :mod:`segment.segmenter` -- :class:`~segment.segmenter.CardiacSegmenter`: frozen LiteMedSAM
  image encoder + trained prompt-free cardiac decoder (LV blood, LV myocardium, RV blood);
  LiteMedSAM's own box-prompted decoder for interactive use.
* :mod:`segment.preprocess`, :mod:`segment.postprocess` -- model grid and anatomical clean-up.
* :mod:`segment.decoder`, :mod:`segment.losses`, :mod:`segment.train` -- the decoder and its training.
* :mod:`segment.acdc_teacher` -- the myopari ACDC network (baseline, RV teacher; optional).
* :mod:`segment.biomarkers` -- EDV, ESV, SV, EF, LV mass, RV volumes, cardiac output.
"""
