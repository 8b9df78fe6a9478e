"""The demo world (docs/DEMO_WORLD.md): its facts (`world`), rendering (`render`), pretraining
pairs (`captions`), the downstream dataset (`dataset`: `python -m tools.demo_world`), the tiny
CLIP pretrained on it (`pretrain`: `python -m tools.pretrain_tiny_clip`) and the routing report of
a trained MoCoOp run (`routing`: `python -m tools.demo_routing`)."""
