"""The frozen CLIP towers as prompt methods use them: the parts of the text tower that
`TextEncoder` runs, per-layer prompt tokens in both towers, and the image tower's local features.

Per-layer ("deep") prompts, as VPT-deep, IVLP and MaPLe place them:
- text: the context vectors of the prompt embeddings are the layer-0 tokens; `DeepTextPrompts`
  replaces the same positions of every sequence with new tokens before each of the next blocks.
  The tokens are the same for every class, so rows that share a prefix still share it, and
  truncation, chunking and the shared prefix stay exact (`TextEncoder` applies them on every
  path);
- image (ViT): `encode_image(..., prompts=P)` with P `[J, n, w]` appends `P[0]` after the patch
  and class tokens (after the positional embedding, before `ln_pre`) and replaces those last n
  tokens with `P[j]` before block j, j = 1 .. J-1.

Local features (PLOT): `encode_image(..., local=True)` also returns the projected patch tokens
of a ViT (`ln_post` and `proj` applied to each, as to the class token) or every output of a
ResNet's attention pool (its query at every position of the 7x7 map, as the class query).
Without prompts and local features `encode_image` is CLIP's own image encoder, bit for bit.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F


class TextTower(NamedTuple):
    """The parts of a CLIP text tower that `TextEncoder` runs, in order."""

    token_embedding: torch.nn.Module
    positional_embedding: torch.Tensor  # [context length, w]
    blocks: torch.nn.ModuleList  # residual blocks: ln_1, attn (in_proj, out_proj), ln_2, mlp
    ln_final: torch.nn.Module
    projection: torch.Tensor  # [w, D]
    dtype: torch.dtype


def text_tower(clip_model):
    """The `TextTower` of an OpenAI `clip.model.CLIP`."""
    return TextTower(
        clip_model.token_embedding,
        clip_model.positional_embedding,
        clip_model.transformer.resblocks,
        clip_model.ln_final,
        clip_model.text_projection,
        clip_model.dtype,
    )


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
    """Whether an image tower is a ViT (`clip.model.VisionTransformer`) rather than a ResNet."""
    return hasattr(visual, "class_embedding") and hasattr(visual, "transformer")


def encode_image(visual, image, prompts=None, local=False):
    """The `ImageOutput` of CLIP's image tower `visual` (module docstring): unnormalised
    features in the tower's dtype, with per-layer `prompts` `[J, n, w]` (ViT only) and the local
    features when `local`."""
    if prompts is None and not local:
        return ImageOutput(visual(image), None)
    if not is_vit(visual):
        if prompts is not None:
            raise ValueError(
                "per-layer image prompts need a ViT image tower; this CLIP's image tower is a ResNet"
            )
        return _resnet_with_local(visual, image)
    return _vit(visual, image, prompts, local)


def _vit(visual, image, prompts, local):
    x = visual.conv1(image.to(visual.conv1.weight.dtype))  # [B, w, grid, grid]
    x = x.flatten(2).permute(0, 2, 1)  # [B, grid², w]
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    patches = x.shape[1] - 1
    if prompts is not None:
        x = torch.cat([x, prompts[0].to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)
    x = visual.ln_pre(x).permute(1, 0, 2)  # [L, B, w]: the blocks' layout
    n = 0 if prompts is None else prompts.shape[1]
    for index, block in enumerate(visual.transformer.resblocks):
        if prompts is not None and 1 <= index < prompts.shape[0]:
            x = torch.cat([x[:-n], prompts[index].to(x.dtype)[:, None].expand(-1, x.shape[1], -1)])
        x = block(x)
    x = x.permute(1, 0, 2)  # [B, L, w]
    features = visual.ln_post(x[:, 0]) @ visual.proj
    locals_ = visual.ln_post(x[:, 1 : 1 + patches]) @ visual.proj if local else None
    return ImageOutput(features, locals_)


def _resnet_with_local(visual, image):
    x = image.to(visual.conv1.weight.dtype)
    for conv, bn, relu in (
        (visual.conv1, visual.bn1, visual.relu1),
        (visual.conv2, visual.bn2, visual.relu2),
    ):
        x = relu(bn(conv(x)))
    x = visual.avgpool(visual.relu3(visual.bn3(visual.conv3(x))))
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
