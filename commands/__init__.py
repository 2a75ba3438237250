"""The modes of the command line as library functions (sample, likelihood, fid, import, ...) and the CLI itself."""
from .modes import RUNNERS, Job
from .sampling import guided_score_fn, sample_to_files, write_samples

__all__ = ["RUNNERS", "Job", "guided_score_fn", "sample_to_files", "write_samples"]
