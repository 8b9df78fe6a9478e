"""`python -m tools.sweep`: whole protocols on every GPU of a machine or on a Slurm cluster.

Modules: the command line (`cli`), the sweep's records in the output folder and what each run is
now (`state`), the local worker pool (`local`), the Slurm backend through submitit (`slurm`) and
what one of its jobs runs (`job`), and what the sweep prints (`progress`). The runs themselves
come from tools.protocols (`plan`), the grid the protocol scripts run. See docs/SWEEPS.md.
"""
