"""`python -m tools.sweep`: whole protocols on every GPU of a machine or on a Slurm cluster.

Modules: the command line (`cli`), the sweep's records in the output folder and what each run is
now (`state`), the local worker pool (`local`), the Slurm backend through submitit (`slurm`),
what Slurm's commands say about jobs (`scheduler`) and what one of its jobs runs (`job`), and what
the sweep prints (`progress`); `cluster_checks` runs the Slurm backend's checks on a real cluster
(scripts/slurm_localhost.sh). The runs themselves come from tools.protocols (`plan`), the grid the
protocol scripts run. See docs/SWEEPS.md.
"""
