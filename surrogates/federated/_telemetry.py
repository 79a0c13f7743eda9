"""Flower and Ray send usage telemetry unless told not to; a hospital's federation sends
nothing outside its own machines. Imported first by `surrogates.federated`, before flwr or
ray: both are off unless the user set the variables beforehand."""

import os

for _name in ("FLWR_TELEMETRY_ENABLED", "RAY_USAGE_STATS_ENABLED"):
    os.environ.setdefault(_name, "0")
