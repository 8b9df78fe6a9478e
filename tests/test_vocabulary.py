"""The start-up warning about class-name words a CLIP never saw: the tiny demo CLIP stores zero
embeddings for every token its captions did not use, so words outside the demo world are named;
a CLIP without zero rows (every real CLIP, and the tests' random one) warns about nothing."""

import pytest
import torch

from clipprompt.clip_loading import load_clip
from clipprompt.templates import bpe
from clipprompt.vocabulary import unlearnt_words, unlearnt_words_warning

DEMO_CLIP = "assets/demo_clip_rn_tiny.pt.gz"


@pytest.fixture(scope="module")
def demo_embedding():
    return load_clip(DEMO_CLIP).token_embedding


def test_demo_clip_names_the_words_outside_its_captions(demo_embedding):
    names = ["red circle", "blue_jay", "Robin", "green heart", "American robin"]
    assert unlearnt_words(demo_embedding, names) == {
        "jay": ["blue_jay"], "robin": ["Robin", "American robin"], "american": ["American robin"]
    }  # fmt: skip
    warning = unlearnt_words_warning(demo_embedding, names, DEMO_CLIP)
    assert warning.startswith(
        f"WARNING: the class names contain 3 word(s) that the CLIP of MODEL.BACKBONE.NAME {DEMO_CLIP} never saw"
    )
    assert "'jay' (blue_jay); 'robin' (Robin, American robin); 'american' (American robin)" in warning
    # The demo world's own classes (colours and shapes) are all known.
    from tools.demo.world import CLASSNAMES, UNSEEN_CLASSNAMES

    assert unlearnt_words_warning(demo_embedding, [*CLASSNAMES, *UNSEEN_CLASSNAMES], DEMO_CLIP) is None


def test_a_clip_without_zero_rows_warns_about_nothing(tiny_clip):
    assert unlearnt_words(tiny_clip.token_embedding, ["blue jay", "xylophone", "Ångström"]) == {}
    embedding = torch.nn.Embedding.from_pretrained(tiny_clip.token_embedding.weight.clone())
    embedding.weight[bpe("xylophone")] = 0  # a token never trained, as the demo CLIP stores it
    assert list(unlearnt_words(embedding, ["blue jay", "xylophone"])) == ["xylophone"]


def test_trainer_start_up_prints_the_warning(capsys):
    pytest.importorskip("dassl", reason="Dassl is not installed (see README set-up)")
    import trainers

    cfg = trainers.make_cfg("CoOp", "configs/datasets/demo_world.yaml", "configs/trainers/CoOp/demo.yaml", [])
    trainers.build_trainer(cfg, ["red circle", "blue jay"])
    assert (
        "never saw in pretraining (their token embeddings are zero): 'jay' (blue jay)."
        in capsys.readouterr().out
    )
