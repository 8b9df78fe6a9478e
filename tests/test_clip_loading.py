import gzip

import pytest
import torch

from clipprompt.clip_loading import CheckpointError, load_clip, read_state_dict, resolve_checkpoint


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_state_dict_checkpoint_round_trip(tiny_clip, tiny_clip_path):
    model = load_clip(tiny_clip_path)
    assert _same_weights(model, tiny_clip)
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training


def test_gzip_and_wrapped_state_dicts(tiny_clip, tmp_path):
    path = tmp_path / "clip.pt.gz"
    buffer = tmp_path / "plain.pt"
    torch.save({"state_dict": tiny_clip.state_dict()}, buffer)
    path.write_bytes(gzip.compress(buffer.read_bytes()))
    assert _same_weights(load_clip(str(path)), tiny_clip)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::FutureWarning")
def test_torchscript_archive(tiny_clip, tmp_path):
    image = torch.zeros(1, 3, 32, 32)
    text = torch.zeros(1, 77, dtype=torch.long)
    traced = torch.jit.trace(tiny_clip, (image, text), check_trace=False)
    path = tmp_path / "traced.pt"
    traced.save(str(path))
    assert _same_weights(load_clip(str(path)), tiny_clip)


def test_fp16_weights(tiny_clip_path):
    model = load_clip(tiny_clip_path, dtype=torch.float16)
    assert model.dtype == torch.float16


def test_unknown_name_is_a_clear_error():
    with pytest.raises(CheckpointError, match="ViT-B/16.*existing checkpoint file"):
        resolve_checkpoint("ViT-B/99")


def test_corrupt_file_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="broken.pt.*corrupt"):
        load_clip(str(path))


def test_truncated_archive_is_a_clear_error(tiny_clip_path, tmp_path):
    path = tmp_path / "truncated.pt"
    with open(tiny_clip_path, "rb") as f:
        data = f.read()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_clip(str(path))


def test_non_clip_state_dict_is_a_clear_error(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(CheckpointError, match="text_projection"):
        read_state_dict(str(path))


def test_incomplete_clip_state_dict_is_a_clear_error(tiny_clip, tmp_path):
    state = dict(tiny_clip.state_dict())
    del state["ln_final.weight"]
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="partial.pt"):
        load_clip(str(path))


def test_fingerprint_names_the_weights_not_the_precision(tiny_clip_path):
    from clipprompt.clip_loading import backbone_fingerprint, build_tiny_clip

    fp32 = load_clip(tiny_clip_path)
    fp16 = load_clip(tiny_clip_path, dtype=torch.float16)
    assert backbone_fingerprint(fp32) == backbone_fingerprint(fp16)
    other = build_tiny_clip(seed=1)  # same architecture, other weights
    assert backbone_fingerprint(other) != backbone_fingerprint(fp32)
    assert len(backbone_fingerprint(fp32)) == 16


def test_weights_that_cannot_be_downloaded_say_what_to_do(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(CheckpointError) as err:
        resolve_checkpoint("ViT-B/32", str(tmp_path))
    message = str(err.value)
    assert "'ViT-B/32' are not in" in message and "name resolution" in message
    assert "https://openaipublic.azureedge.net/clip/models/" in message
    assert f"put it at {tmp_path}/ViT-B-32.pt" in message
    assert "MODEL.BACKBONE.DOWNLOAD_ROOT" in message and "path of a local checkpoint" in message
