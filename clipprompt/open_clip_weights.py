"""The weights of an open_clip backbone (`MODEL.BACKBONE.WEIGHTS`): an open_clip pretrained tag of
the model, a Hugging Face hub repository (`hf-hub:org/repo` or `hf-hub:org/repo/<file>`) or a
checkpoint file.

Tags and hub weights are read from a cache folder (`MODEL.BACKBONE.DOWNLOAD_ROOT`, default
~/.cache/open_clip): one folder per hub repository (`<org>--<repo>/<file>`), URL downloads under
their file name. A file missing there is downloaded there (huggingface_hub, or open_clip's URL
downloader with its SHA256 check); where that fails (offline), one `CheckpointError` names the
URL to download and the path to put it at.
"""

import os

from .clip_loading import CheckpointError

DEFAULT_ROOT = "~/.cache/open_clip"
HUB_WEIGHTS = "open_clip_pytorch_model.bin"  # open_clip's default file of a hub repository


def pretrained_tags(model):
    import open_clip

    return open_clip.list_pretrained_tags_by_model(model)


def resolve_weights(source, config):
    """(checkpoint file, the tag's open_clip config or {}) of `source.weights`."""
    import open_clip

    weights, root = source.weights, os.path.expanduser(source.download_root or DEFAULT_ROOT)
    tags = pretrained_tags(source.model)
    if not weights:
        raise CheckpointError(
            f"MODEL.BACKBONE.WEIGHTS is empty for {source.name}: set it to a pretrained tag "
            f"({', '.join(tags) or 'open_clip has none for this model'}), hf-hub:<org>/<repo> or a checkpoint file"
        )
    if weights.startswith("hf-hub:"):
        return hub_file(*_split_hub(weights[len("hf-hub:") :]), root, source), {}
    path = os.path.expanduser(weights)
    if os.path.isfile(path):
        return path, {}
    tag = open_clip.get_pretrained_cfg(source.model, weights)
    if tag and source.model_config:
        raise CheckpointError(
            f"MODEL.BACKBONE.WEIGHTS {weights!r} is a pretrained tag of open_clip's own {source.name}, but "
            "MODEL.BACKBONE.MODEL_CONFIG replaces its architecture: give a checkpoint file or hf-hub: name, "
            "or clear MODEL_CONFIG"
        )
    if not tag:
        raise CheckpointError(
            f"MODEL.BACKBONE.WEIGHTS {weights!r} is not an existing file, an hf-hub: name or a pretrained "
            f"tag of {source.name} ({', '.join(tags) or 'open_clip has none for this model'})"
        )
    _check_activation(source, config, tag)
    if tag.get("hf_hub"):  # open_clip prefers the hub where a tag has both
        return hub_file(*_split_hub(tag["hf_hub"]), root, source), tag
    return url_file(tag["url"], root, source), tag


def _split_hub(spec):
    """(repository, file) of "org/repo" or "org/repo/" (open_clip's default file) or "org/repo/<file>"."""
    parts = spec.strip("/").split("/")
    return "/".join(parts[:2]), "/".join(parts[2:]) or HUB_WEIGHTS


def _check_activation(source, config, tag):
    """open_clip only warns when a tag trained with QuickGELU is loaded into GELU (or back)."""
    trained, built = bool(tag.get("quick_gelu")), bool(config.get("quick_gelu"))
    if trained != built:
        other = source.model + "-quickgelu" if trained else source.model.removesuffix("-quickgelu")
        raise CheckpointError(
            f"the weights {source.weights} of {source.name} were trained with "
            f"{'QuickGELU' if trained else 'GELU'} activations, but {source.name} uses "
            f"{'QuickGELU' if built else 'GELU'}: set MODEL.BACKBONE.NAME open_clip:{other}"
        )


def _safetensors_name(filename):
    if filename == HUB_WEIGHTS:
        return "open_clip_model.safetensors"
    if filename.endswith((".bin", ".pth")):
        return filename[:-4] + ".safetensors"
    return None


def hub_file(repo, filename, root, source):
    """A file of a Hugging Face hub repository in the cache folder `root/<org>--<repo>/`, read
    from there or downloaded there (the safetensors version first, as open_clip prefers it)."""
    folder = os.path.join(root, repo.replace("/", "--"))
    names = [n for n in (_safetensors_name(filename), filename) if n]
    for name in names:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    errors = []
    for name in names:
        try:
            return download_hub_file(repo, name, folder)
        except hub_errors() as err:  # the message says what to do
            errors.append(f"{name}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    url = f"https://huggingface.co/{repo}/resolve/main/{filename}"
    raise _unavailable(source, os.path.join(folder, filename), url, "; ".join(errors))


def url_file(url, root, source):
    """A file downloaded from `url` into `root` under its own name (open_clip's downloader, which
    checks the SHA256 that open_clip's release URLs carry)."""
    target = os.path.join(root, os.path.basename(url))
    try:
        return download_url_file(url, root)
    except (OSError, RuntimeError) as err:  # no network, unwritable folder, SHA256 mismatch
        raise _unavailable(source, target, url, f"{type(err).__name__}: {err}") from None


def hub_errors():
    """huggingface_hub's OSErrors (no network, offline mode, no such repository or file) and its
    EntryNotFoundError, which is not one (ImportError: huggingface_hub is missing)."""
    try:
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError:
        return (OSError, ImportError)
    return (OSError, ImportError, EntryNotFoundError)


def download_hub_file(repo, filename, folder):
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id=repo, filename=filename, local_dir=folder)


def download_url_file(url, root):
    from open_clip.pretrained import download_pretrained_from_url

    return download_pretrained_from_url(url, cache_dir=root)


def _unavailable(source, target, url, why):
    return CheckpointError(
        f"The weights {source.weights!r} of {source.name} are not in the cache and cannot be downloaded "
        f"({why}). Download {url} where there is network access and put it at {target} (the cache "
        "folder is MODEL.BACKBONE.DOWNLOAD_ROOT, default ~/.cache/open_clip), or set "
        "MODEL.BACKBONE.WEIGHTS to the downloaded file."
    )
