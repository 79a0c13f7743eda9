"""PK/PD model classes (re-exported flat by `pkpd`)."""

from ._uva_padova import UVAPadova as UVAPadova
