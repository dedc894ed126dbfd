"""Batch reconstruction of raw files (the logic behind ``cardiomm recon``).

* :mod:`cardiomm.batch.inputs`: which files a run reads and the names of their outputs;
* :mod:`cardiomm.batch.prepare`: read a file, undersample it retrospectively if asked, report R;
* :mod:`cardiomm.batch.engines`: the methods (CardioMM network, classical baselines) slice batch by batch;
* :mod:`cardiomm.batch.writers`: ISMRMRD images, NIfTI, previews, done markers, summary, staging;
* :mod:`cardiomm.batch.job`: one input from start to finish, failures recorded, never half-written;
* :mod:`cardiomm.batch.progress`: the rich progress bars;
* :mod:`cardiomm.batch.distributed`: the same job as a Lightning ``predict`` sharded over processes/nodes.
"""

from cardiomm.batch.job import BatchJob, FileResult, ReconSettings
from cardiomm.batch.prepare import Undersampling

__all__ = ["BatchJob", "FileResult", "ReconSettings", "Undersampling"]
