"""Dassl's data manager with every image read by `clipprompt.images.open_rgb` (Dassl is used
unmodified: its `DatasetWrapper.__getitem__` calls its own `read_image`, PIL's convert("RGB"),
which reads 16-bit and float images as white or black)."""

from dassl.data.data_manager import DataManager, DatasetWrapper

from clipprompt.images import open_rgb


class ImageDatasetWrapper(DatasetWrapper):
    """Dassl's dataset wrapper (its transforms, K_TRANSFORMS and RETURN_IMG0), reading images
    with `open_rgb`."""

    def __getitem__(self, idx):
        item = self.data_source[idx]
        image = open_rgb(item.impath)
        output = {"label": item.label, "domain": item.domain, "impath": item.impath, "index": idx}
        transforms = self.transform if isinstance(self.transform, (list, tuple)) else [self.transform]
        for k, transform in enumerate(transforms):
            key = "img" if k == 0 else f"img{k + 1}"
            output[key] = image if transform is None else self._transform_image(transform, image)
        if self.return_img0:
            output["img0"] = self.to_tensor(image)
        return output


def build_data_manager(cfg):
    """Dassl's `DataManager(cfg)` (datasets, samplers, transforms, loaders) over `ImageDatasetWrapper`."""
    return DataManager(cfg, dataset_wrapper=ImageDatasetWrapper)
