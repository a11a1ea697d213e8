"""ProCache benchmarks (`make bench`): speed against full compute and quality on a small trained DiT.

Benchmark-only dependencies (scikit-learn for the digits data set, matplotlib for plots) are listed in
benchmarks/requirements.txt; `python -m benchmarks.run` installs them into the running interpreter when
they are missing. Nothing here is imported by the node pack itself.
"""
