"""Results of an output tree written by the protocol scripts, or of any folder of runs: run logs
(`runlog`, per-epoch numbers: `epochs`), statistics over seeds (`stats`), published numbers
(`paper`), the tables of each protocol (`base2new`, `fewshot`, `xd`) and of runs outside the
layout (`rungroups`, `runreport`), assembled by `report` (`python -m tools.results`), and the
figures (`plots`: `python -m tools.plots`, drawn by `plot_protocols` and `plot_runs` with
`figures`); `args` holds the flags they share. `synthetic` writes made-up output trees for tests
and examples."""
