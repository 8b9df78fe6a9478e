from dassl.data.datasets import DATASET_REGISTRY

from .imagenet import ImageNetVariant


@DATASET_REGISTRY.register()
class ImageNetSketch(ImageNetVariant):
    folder = "imagenet-sketch"
    image_folder = "images"
    download_hint = (
        "Extract ImageNet-Sketch (its GitHub page) so that imagenet-sketch/images/<wnid>/ exist "
        "and copy imagenet/classnames.txt to imagenet-sketch/; see docs/DATASETS.md."
    )
