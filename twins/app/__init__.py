"""twins.app: the faces of the toolkit, over the core and the trials.

- Trial specs in TOML: `load_trial`, `trial_from_dict`, `RunOptions`, `SpecError`.
- Reports: `write_report` (a trial's results folder) and `write_twin_report` (one digital
  twin), each one self-contained HTML file.
- The `twins` command line (`twins demo`, `twins trial`, `twins report`, `twins cohort`):
  `twins.app._cli`.
"""

from ._report import write_report as write_report
from ._spec import RunOptions as RunOptions
from ._spec import SpecError as SpecError
from ._spec import load_trial as load_trial
from ._spec import trial_from_dict as trial_from_dict
from ._spec_t1d import read_t1d_spec as read_t1d_spec
from ._spec_t1d import t1d_trial_from_dict as t1d_trial_from_dict
from ._twin_report import write_twin_report as write_twin_report

__all__ = [
    "RunOptions",
    "SpecError",
    "load_trial",
    "read_t1d_spec",
    "t1d_trial_from_dict",
    "trial_from_dict",
    "write_report",
    "write_twin_report",
]
