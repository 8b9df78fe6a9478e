from dassl.data.datasets import DATASET_REGISTRY

from .imagenet import ImageNetVariant


@DATASET_REGISTRY.register()
class ImageNetR(ImageNetVariant):
    """200 ImageNet classes, relabelled 0..199 in classnames.txt order."""

    folder = "imagenet-rendition"
    image_folder = "imagenet-r"
    present_classes_only = True
    download_hint = (
        "Extract imagenet-r.tar (imagenet-r GitHub page) into imagenet-rendition/ "
        "and copy imagenet/classnames.txt there; see docs/DATASETS.md."
    )
