"""Dassl-free core of the repository: CLIP loading, the truncated text encoder, vectorised
prompt assembly, routers and gates, and the losses of the implemented methods."""
