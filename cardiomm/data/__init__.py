"""Data layer: readers and writers (ISMRMRD, CMRxRecon, DICOM), simulation, the beating-heart phantom, datasets."""
