"""`python -m tools.export`: a trained run as a classifier file that needs neither Dassl nor yacs
(`clipprompt.exported.load_exported` reads it). `run` rebuilds a finished run for a class list
(also used by predict.py); `write` turns its model into the file's tensors and metadata."""
