"""Results of an output tree written by the protocol scripts: run logs (`runlog`), statistics
over seeds (`stats`), published numbers (`paper`), the tables of each protocol (`base2new`,
`fewshot`, `xd`, assembled by `report`: `python -m tools.results`) and the figures (`plots`:
`python -m tools.plots`). `synthetic` writes made-up output trees for tests and examples."""
