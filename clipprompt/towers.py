"""The frozen CLIP towers as prompt methods use them, over OpenAI's CLIP and open_clip's `CLIP`
and `CustomTextCLIP`: the parts of the text tower that `TextEncoder` runs (`text_tower`), per-layer
prompt tokens in both towers, the image tower's local features, and what the classifier needs of
the model (`clip_dtype`, `image_resolution`, `embed_dim`, `logit_bias`).

Text towers (`TextTower`): token and positional embeddings, residual blocks (ln_1, attention from
`in_proj_weight` / `in_proj_bias` / `out_proj`, ln_2, mlp, and open_clip's LayerScale `ls_1` /
`ls_2` where it has them; `TextEncoder` runs the attention itself, batch first, so the blocks'
own layout does not matter), the final norm, the projection (a matrix, or a linear layer with a
bias in SigLIP's towers), whether attention is causal, and the model's tokenizer
(`clipprompt.tokenization`) with its pooling. A tower that is causal, pools at the EOT and
tokenizes with CLIP's BPE (`prefix_exact`) gets truncation and the shared prefix; others run the
full context with their padding (docs/BACKBONES.md). Towers this interface cannot run exactly
(Hugging Face text encoders, CoCa's class token, open_clip's custom attention blocks) are
refused with `UnsupportedTower`.

Per-layer ("deep") prompts, as VPT-deep, IVLP and MaPLe place them:
- text: the context vectors of the prompt embeddings are the layer-0 tokens; `DeepTextPrompts`
  replaces the same positions of every sequence with new tokens before each of the next blocks.
  The tokens are the same for every class, so rows that share a prefix still share it, and
  truncation, chunking and the shared prefix stay exact (`TextEncoder` applies them on every
  path);
- image (ViT: OpenAI's or open_clip's `VisionTransformer` with class-token pooling):
  `encode_image(..., prompts=P)` with P `[J, n, w]` appends `P[0]` after the patch and class
  tokens (after the positional embedding, before `ln_pre`) and replaces those last n tokens with
  `P[j]` before block j, j = 1 .. J-1.

Local features (PLOT): `encode_image(..., local=True)` also returns the projected patch tokens
of a ViT (`ln_post` and `proj` applied to each, as to the class token) or every output of a
ResNet's attention pool (its query at every position of the 7x7 map, as the class query).
Without prompts and local features `encode_image` is the model's own image encoder, bit for bit;
image towers from timm (EVA02, SigLIP) support only that.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .tokenization import CLIP_BPE, BPETokenizer


class UnsupportedTower(ValueError):
    """A tower of a backbone that this interface cannot run (exactly)."""


class TextTower(NamedTuple):
    """The parts of a CLIP text tower that `TextEncoder` runs, in order, and how it reads text."""

    token_embedding: torch.nn.Module
    positional_embedding: torch.Tensor  # [context length, w]
    blocks: torch.nn.ModuleList  # residual blocks: ln_1, attn (in_proj, out_proj), ln_2, mlp (ls_1, ls_2)
    ln_final: torch.nn.Module
    projection: torch.Tensor | nn.Linear | None  # [w, D] matrix, linear layer (with bias) or none
    dtype: torch.dtype
    causal: bool = True  # causal attention (False: every position sees every other)
    tokenizer: object = CLIP_BPE  # `clipprompt.tokenization.Tokenizer`, with the tower's pooling
    name: str = "CLIP"

    @property
    def prefix_exact(self):
        """Whether truncation and the shared prefix leave its features exactly as they are: a
        causal tower that pools at the EOT of CLIP's BPE."""
        return self.causal and self.tokenizer.is_clip_bpe and self.tokenizer.pool == "argmax"

    def why_not_prefix_exact(self):
        """What keeps truncation and the shared prefix from being exact on this tower."""
        reasons = [] if self.causal else ["its attention is not causal"]
        if self.tokenizer.pool != "argmax":
            reasons.append(f"it pools at the {self.tokenizer.pool!r} position, not at the EOT")
        if not self.tokenizer.is_clip_bpe:
            reasons.append(f"its tokenizer is {self.tokenizer.name}, not CLIP's BPE")
        return "; ".join(reasons)

    def project(self, x):
        """The projection of pooled, normalised tokens `[N, w]` into the joint space."""
        if self.projection is None:
            return x
        if isinstance(self.projection, nn.Linear):
            return self.projection(x)
        return x @ self.projection

    @property
    def embed_dim(self):
        if self.projection is None:
            return self.positional_embedding.shape[1]
        if isinstance(self.projection, nn.Linear):
            return self.projection.out_features
        return self.projection.shape[1]


def is_open_clip(clip_model):
    return type(clip_model).__module__.startswith("open_clip.")


def text_tower(clip_model):
    """The `TextTower` of an OpenAI `clip.model.CLIP` or an open_clip `CLIP` / `CustomTextCLIP`
    (loaded by `clipprompt.clip_loading.load_clip`, which gives it its tokenizer)."""
    if not is_open_clip(clip_model):
        length = clip_model.positional_embedding.shape[0]
        tokenizer = CLIP_BPE if length == CLIP_BPE.context_length else BPETokenizer(context_length=length)
        return TextTower(
            clip_model.token_embedding,
            clip_model.positional_embedding,
            clip_model.transformer.resblocks,
            clip_model.ln_final,
            clip_model.text_projection,
            clip_model.dtype,
            tokenizer=tokenizer,
        )
    from .open_clip_backbone import backbone_of

    text = getattr(clip_model, "text", clip_model)  # CustomTextCLIP keeps its tower apart
    backbone = backbone_of(clip_model)
    if not hasattr(text, "token_embedding"):
        raise UnsupportedTower(
            f"{backbone.name}: its text tower is {type(text).__name__} (a Hugging Face text encoder), "
            "not a CLIP text transformer: prompts cannot be run through it (docs/BACKBONES.md)"
        )
    if getattr(text, "cls_emb", None) is not None or getattr(text, "use_pad_mask", False):
        raise UnsupportedTower(
            f"{backbone.name}: text towers with a class token or a padding mask (CoCa) are not supported"
        )
    for block in text.transformer.resblocks:
        _check_block(block, backbone.name)
    pool = getattr(text, "pool_type", None) or clip_model.text_pool_type
    eos = getattr(text, "eos_id", None) if text is not clip_model else clip_model.text_eos_id
    return TextTower(
        text.token_embedding,
        text.positional_embedding,
        text.transformer.resblocks,
        text.ln_final,
        text.text_projection,
        text.transformer.get_cast_dtype(),
        causal=text.attn_mask is not None,
        tokenizer=backbone.tokenizer(text.positional_embedding.shape[0], pool, eos),
        name=backbone.name,
    )


def _check_block(block, name):
    attn = getattr(block, "attn", None)
    plain = isinstance(attn, nn.MultiheadAttention) and attn._qkv_same_embed_dim and attn.bias_k is None
    if not plain or hasattr(block, "ln_1_kv") or not attn.in_proj_weight.shape[0] == 3 * attn.embed_dim:
        raise UnsupportedTower(
            f"{name}: its text blocks are {type(block).__name__} with {type(attn).__name__} attention "
            "(open_clip's custom blocks: qk-norm, scaled cosine attention, head scales); only CLIP's "
            "residual attention blocks (LayerScale included) are supported"
        )


def clip_dtype(clip_model):
    """The dtype of the image tower's weights (images are cast to it)."""
    if not is_open_clip(clip_model):
        return clip_model.dtype
    visual = clip_model.visual
    conv = getattr(visual, "conv1", None)
    if conv is not None:
        return conv.weight.dtype
    return next(p.dtype for p in visual.parameters() if p.ndim >= 2)


def image_resolution(clip_model):
    """(height, width) of the images the image tower takes."""
    visual = clip_model.visual
    size = getattr(visual, "input_resolution", None) or visual.image_size
    return tuple(size) if isinstance(size, (tuple, list)) else (size, size)


def embed_dim(clip_model):
    """The width of the joint image-text space (image and text features)."""
    return text_tower(clip_model).embed_dim


def logit_bias(clip_model):
    """The model's learned logit bias (SigLIP), else None (OpenAI's CLIP has none)."""
    return getattr(clip_model, "logit_bias", None)


class DeepTextPrompts(NamedTuple):
    """Text tokens replaced layer by layer: before block j + 1 (j = 0 .. J-1), the `positions` of
    every sequence are set to `tokens[j]` (the same tokens for every class and prompt)."""

    tokens: torch.Tensor  # [J, n, w]
    positions: torch.Tensor  # [n] sequence positions (the context slots after SOS)

    def at_block(self, index):
        """The tokens `[n, w]` that replace the positions before block `index`, or None."""
        j = index - 1
        return self.tokens[j] if 0 <= j < self.tokens.shape[0] else None


def replace_positions(x, positions, tokens):
    """`x` `[N, L, w]` with `x[:, positions] = tokens` (`[n, w]`), out of place (gradients reach
    both the kept entries and the tokens)."""
    rows = torch.arange(x.shape[0], device=x.device)[:, None]
    return x.index_put((rows, positions[None, :]), tokens.to(x.dtype).expand(x.shape[0], -1, -1))


def replace_packed(x, token_positions, deep, tokens):
    """A packed token sequence `x` `[T, w]` (`token_positions` `[T]`: each token's position)
    with every token at one of `deep.positions` set to its entry of `tokens` `[n, w]`."""
    size = max(int(token_positions.max()), int(deep.positions.max())) + 1
    lookup = torch.full((size,), -1, dtype=torch.long, device=x.device)
    lookup[deep.positions] = torch.arange(len(deep.positions), device=x.device)
    slot = lookup[token_positions]
    where = (slot >= 0).nonzero().squeeze(1)
    return x.index_put((where,), tokens.to(x.dtype)[slot[where]])


class ImageOutput(NamedTuple):
    features: torch.Tensor  # [B, D] the image features (class token / attention-pool output)
    local: torch.Tensor | None  # [B, M, D] local features, when asked for


def is_vit(visual):
    """Whether an image tower is a CLIP ViT (OpenAI's or open_clip's `VisionTransformer`)."""
    return hasattr(visual, "class_embedding") and hasattr(visual, "transformer")


def is_resnet(visual):
    """Whether an image tower is CLIP's ModifiedResNet (OpenAI's or open_clip's)."""
    return hasattr(visual, "attnpool") and hasattr(visual, "layer4")


def encode_image(visual, image, prompts=None, local=False):
    """The `ImageOutput` of CLIP's image tower `visual` (module docstring): unnormalised
    features in the tower's dtype, with per-layer `prompts` `[J, n, w]` (ViT only) and the local
    features when `local`."""
    if prompts is None and not local:
        return ImageOutput(visual(image), None)
    asked = "per-layer image prompts" if prompts is not None else "local image features"
    if is_vit(visual):
        _check_vit_pooling(visual, asked)
        return _vit(visual, image, prompts, local)
    if is_resnet(visual) and prompts is None:
        return _resnet_with_local(visual, image)
    kind = "a ResNet" if is_resnet(visual) else f"{type(visual).__name__} ({_trunk_name(visual)})"
    towers = "a ViT image tower" if prompts is not None else "a ViT or ResNet image tower"
    raise UnsupportedTower(
        f"{asked} need {towers} (OpenAI's or open_clip's); this CLIP's image tower is {kind}"
    )


def _trunk_name(visual):
    trunk = getattr(visual, "trunk", None)
    return f"timm's {type(trunk).__name__}" if trunk is not None else "not a CLIP tower"


def _check_vit_pooling(visual, asked):
    """open_clip's ViTs may pool otherwise than by the class token; those are refused."""
    pool = getattr(visual, "pool_type", "tok")
    if getattr(visual, "attn_pool", None) is not None or pool != "tok":
        how = (
            "an attentional pooler" if getattr(visual, "attn_pool", None) is not None else f"{pool!r} pooling"
        )
        raise UnsupportedTower(f"{asked} need a ViT pooled by its class token; this image tower has {how}")


def _vit(visual, image, prompts, local):
    x = visual.conv1(image.to(visual.conv1.weight.dtype))  # [B, w, grid, grid]
    x = x.flatten(2).permute(0, 2, 1)  # [B, grid², w]
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    patches = x.shape[1] - 1
    x = getattr(visual, "patch_dropout", nn.Identity())(x)  # open_clip's (an identity in eval mode)
    if prompts is not None:
        x = torch.cat([x, prompts[0].to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)
    # OpenAI's blocks take [L, B, w]; open_clip's are batch first.
    batch_first = getattr(visual.transformer, "batch_first", False)
    x = visual.ln_pre(x) if batch_first else visual.ln_pre(x).permute(1, 0, 2)
    n = 0 if prompts is None else prompts.shape[1]
    for index, block in enumerate(visual.transformer.resblocks):
        if prompts is not None and 1 <= index < prompts.shape[0]:
            tokens = prompts[index].to(x.dtype)
            if batch_first:
                x = torch.cat([x[:, :-n], tokens.expand(x.shape[0], -1, -1)], dim=1)
            else:
                x = torch.cat([x[:-n], tokens[:, None].expand(-1, x.shape[1], -1)])
        x = block(x)
    x = x if batch_first else x.permute(1, 0, 2)  # [B, L, w]
    features = _vit_project(visual, visual.ln_post(x[:, 0]))
    locals_ = _vit_project(visual, visual.ln_post(x[:, 1 : 1 + patches])) if local else None
    return ImageOutput(features, locals_)


def _vit_project(visual, x):
    return x if visual.proj is None else x @ visual.proj


def _resnet_with_local(visual, image):
    def act(i):  # OpenAI names the stem's activations relu1-3, open_clip act1-3
        return getattr(visual, f"relu{i}", None) or getattr(visual, f"act{i}")

    x = image.to(visual.conv1.weight.dtype)
    for conv, bn, relu in ((visual.conv1, visual.bn1, act(1)), (visual.conv2, visual.bn2, act(2))):
        x = relu(bn(conv(x)))
    x = visual.avgpool(act(3)(visual.bn3(visual.conv3(x))))
    for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
        x = layer(x)
    out = _attention_pool(visual.attnpool, x)  # [HW + 1, B, D]
    return ImageOutput(out[0], out[1:].permute(1, 0, 2))


def _attention_pool(pool, x):
    """Every output of CLIP's `AttentionPool2d` (the mean query first, then one per position):
    the computation its forward makes, returning all of it rather than the first row."""
    x = x.flatten(2).permute(2, 0, 1)  # [HW, B, C]
    x = torch.cat([x.mean(dim=0, keepdim=True), x]) + pool.positional_embedding[:, None, :].to(x.dtype)
    out, _ = F.multi_head_attention_forward(
        query=x,
        key=x,
        value=x,
        embed_dim_to_check=x.shape[-1],
        num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight,
        v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None,
        bias_v=None,
        add_zero_attn=False,
        dropout_p=0.0,
        out_proj_weight=pool.c_proj.weight,
        out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True,
        training=pool.training,
        need_weights=False,
    )
    return out
