from dassl.data.datasets import DATASET_REGISTRY

from .imagenet import ImageNetVariant


@DATASET_REGISTRY.register()
class ImageNetA(ImageNetVariant):
    """200 ImageNet classes, relabelled 0..199 in classnames.txt order."""

    folder = "imagenet-adversarial"
    image_folder = "imagenet-a"
    present_classes_only = True
    download_hint = (
        "Extract imagenet-a.tar (natural-adv-examples GitHub page) into imagenet-adversarial/ "
        "and copy imagenet/classnames.txt there; see docs/DATASETS.md."
    )
