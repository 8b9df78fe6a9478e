"""What the routers of a run select, epoch by epoch: the routing statistics a trainer records
for models that route (MoCoOp's experts, MoPD's teachers) and writes next to its checkpoints."""

import csv
import json
import os

import torch

from clipprompt.atomic import atomic_file


class RoutingStats:
    """Per-epoch utilisation: share of the top-k selections and mean weight per candidate.

    `selection_share[g]` = (times g is among an image's top k) / (images * k), so the shares
    sum to 1; `mean_weight[g]` = the routing weight of g averaged over all images, 0 where it
    was not selected (also sums to 1). Where the images' labels are given (evaluation), a record
    also has `per_class`: the same two quantities per class (`images`: how many of each class
    were seen; null shares for a class without images). Records accumulate over epochs and are
    written as JSON (`{"names", "top_k", "classnames", "records": [...]}`) and CSV (one row per
    epoch, split and candidate; `<stem>_per_class.csv`: one per epoch, split, class and candidate).
    """

    def __init__(self, names, top_k, classnames=()):
        self.names = list(names)
        self.top_k = top_k
        self.classnames = list(classnames)
        self.records = []
        self.reset()

    def reset(self):
        self._counts = torch.zeros(len(self.names), dtype=torch.float64)
        self._weights = torch.zeros(len(self.names), dtype=torch.float64)
        self._images = 0
        shape = (len(self.classnames), len(self.names))
        self._class_counts = torch.zeros(shape, dtype=torch.float64)
        self._class_weights = torch.zeros(shape, dtype=torch.float64)
        self._class_images = None  # images per class, once labels were given

    @torch.no_grad()
    def update(self, index, weight, label=None):
        """Count one batch's routing (`[B, k]` candidates and weights), per class too when the
        batch's labels `[B]` are given."""
        index, weight = index.detach().cpu(), weight.detach().cpu().double()
        self._counts += torch.bincount(index.flatten(), minlength=len(self.names)).double()
        self._weights.index_add_(0, index.flatten(), weight.flatten())
        self._images += index.shape[0]
        if label is not None:
            self._update_classes(index, weight, label.detach().cpu().long())

    def _update_classes(self, index, weight, label):
        num_classes = len(self.classnames)
        if label.shape != index.shape[:1] or not ((label >= 0) & (label < num_classes)).all():
            raise ValueError(
                f"routing statistics: labels {label.tolist()} must be one per image and index the "
                f"{num_classes} classes the statistics were made for"
            )
        if self._class_images is None:
            self._class_images = torch.zeros(num_classes, dtype=torch.float64)
        self._class_images += torch.bincount(label, minlength=num_classes).double()
        cells = (label[:, None] * len(self.names) + index).flatten()  # (class, candidate) pairs
        self._class_counts.view(-1).index_add_(0, cells, torch.ones(cells.shape, dtype=torch.float64))
        self._class_weights.view(-1).index_add_(0, cells, weight.flatten())

    def _per_class(self):
        images = self._class_images
        shares, weights = [], []
        for c, n in enumerate(images.tolist()):
            shares.append((self._class_counts[c] / (n * self.top_k)).tolist() if n else None)
            weights.append((self._class_weights[c] / n).tolist() if n else None)
        return {
            "images": [int(n) for n in images.tolist()],
            "selection_share": shares,
            "mean_weight": weights,
        }

    def close(self, epoch, split):
        """Turn the accumulated counts into a record (if any images were seen) and reset."""
        if not self._images:
            return None
        record = {
            "epoch": epoch,
            "split": split,
            "count": self._images,
            "selection_share": (self._counts / (self._images * self.top_k)).tolist(),
            "mean_weight": (self._weights / self._images).tolist(),
        }
        if self._class_images is not None:
            record["per_class"] = self._per_class()
        self.records.append(record)
        self.reset()
        return record

    def summary(self, record, width=40):
        lines = [
            f"Routing on {record['split']} (epoch {record['epoch']}, {record['count']} images): share / mean weight"
        ]
        for name, share, weight in zip(self.names, record["selection_share"], record["mean_weight"]):
            lines.append(f"  {share:6.1%}  {weight:.3f}  {name[:width]}")
        return "\n".join(lines)

    def restore(self, directory, stem, upto_epoch):
        """Reload the training and validation records of epochs <= `upto_epoch` written by an
        interrupted run (in `directory`: its folder, or the one it is resumed from). Test records
        are not kept: the resumed run evaluates its final model again."""
        path = os.path.join(directory, f"{stem}.json")
        if not os.path.exists(path):
            print(f"Warning: no {path}: the routing records of epochs 1-{upto_epoch} are not kept")
            return
        with open(path) as f:
            saved = json.load(f)
        if saved["names"] != self.names:
            raise RuntimeError(f"{path} describes other candidates than this model: {saved['names']}")
        self.records = [r for r in saved["records"] if r["epoch"] <= upto_epoch and r["split"] != "test"]

    def write(self, directory, stem):
        """Write the files atomically: a resumed run reloads the JSON (`restore`)."""
        state = {
            "names": self.names,
            "top_k": self.top_k,
            "classnames": self.classnames,
            "records": self.records,
        }
        with atomic_file(os.path.join(directory, f"{stem}.json")) as f:
            json.dump(state, f, indent=1)
        with atomic_file(os.path.join(directory, f"{stem}.csv"), newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["epoch", "split", "index", "name", "selection_share", "mean_weight"])
            for r in self.records:
                for g, name in enumerate(self.names):
                    writer.writerow(
                        [r["epoch"], r["split"], g, name, r["selection_share"][g], r["mean_weight"][g]]
                    )
        if any("per_class" in r for r in self.records):
            self._write_per_class(os.path.join(directory, f"{stem}_per_class.csv"))

    def _write_per_class(self, path):
        with atomic_file(path, newline="") as f:
            writer = csv.writer(f)
            writer.writerow(
                [
                    "epoch",
                    "split",
                    "label",
                    "class",
                    "images",
                    "index",
                    "name",
                    "selection_share",
                    "mean_weight",
                ]
            )
            for r in self.records:
                per_class = r.get("per_class")
                for c, classname in enumerate(self.classnames if per_class else ()):
                    shares, weights = per_class["selection_share"][c], per_class["mean_weight"][c]
                    for g, name in enumerate(self.names):
                        share = "" if shares is None else shares[g]
                        weight = "" if weights is None else weights[g]
                        row = [r["epoch"], r["split"], c, classname, per_class["images"][c], g, name]
                        writer.writerow(row + [share, weight])
