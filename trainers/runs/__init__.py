"""Run bookkeeping beside the trainer base: checkpoint files and their identity, the run folder
(which configs may share it, its log), determinism, the learning-rate schedule and the routing
statistics a run writes. Dassl-free, so that it is testable without it; `clipprompt` (the
library) knows nothing of runs."""
