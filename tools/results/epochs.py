"""Per-epoch numbers of a run, read from its log (runlog.newest_log) as Dassl prints them.

Each epoch line (`epoch [e/E] batch [b/B] ... loss 1.02 (1.08) loss_cls ... acc 62.5 (58.8) lr
1.8e-04 ...`) holds each meter's last value and, in parentheses, its average over the epoch's
batches so far; an epoch's numbers are the averages of its last printed line (the epoch's last
batch when TRAIN.PRINT_FREQ divides the batches or exceeds them, as in every config here). A run
resumed in the same log repeats epochs: the later lines win. Evaluations (`Evaluate on the
*val* set` and its `=> result` block) belong to the epoch printed before them: runs with
TEST.FINAL_MODEL best_val evaluate the validation set after every epoch; the final test comes
after the last epoch.
"""

import re
from dataclasses import dataclass, field

_EPOCH_LINE = re.compile(r"^epoch \[(\d+)/(\d+)\] batch \[(\d+)/(\d+)\] (.*)$")
_METER = re.compile(r"(\w+) (\S+) \((\S+)\)")
_LR = re.compile(r"\blr (\S+)")
_EVALUATE = re.compile(r"^Evaluate on the \*(\w+)\* set$")
_FIELD = re.compile(r"^\* (\w+): ([\d,]+(?:\.\d+)?)%?$")
# Meters that time the loop rather than measure the model.
_TIMING = {"time", "data"}


@dataclass
class EpochLog:
    max_epoch: int = 0
    # {epoch: {meter: epoch average}}: the loss terms (`loss`, `loss_cls`, ...), `acc` (training
    # accuracy of the batches, %) and `lr`.
    train: dict = field(default_factory=dict)
    # {epoch: {split: accuracy %}} of the evaluations after an epoch (0: before any training).
    evaluations: dict = field(default_factory=dict)

    def meters(self):
        """Meter names in the order the log prints them (lr last)."""
        names = dict.fromkeys(name for values in self.train.values() for name in values)
        return sorted(names, key=lambda n: (n == "lr", list(names).index(n)))

    def series(self, meter):
        """(epochs, values) of one meter, in epoch order."""
        points = sorted((e, v[meter]) for e, v in self.train.items() if meter in v)
        return [e for e, _ in points], [v for _, v in points]

    def evaluation_series(self, split):
        points = sorted((e, v[split]) for e, v in self.evaluations.items() if split in v)
        return [e for e, _ in points], [v for _, v in points]


def _accuracy(fields):
    if fields.get("total"):
        return 100.0 * fields.get("correct", 0.0) / fields["total"]
    return fields.get("accuracy")


def parse_epochs(text):
    """The EpochLog of a log's text."""
    log = EpochLog()
    epoch, split, fields = 0, None, None
    for line in text.splitlines():
        line = line.rstrip()
        if m := _EPOCH_LINE.match(line):
            epoch, log.max_epoch = int(m[1]), int(m[2])
            values = {name: float(avg) for name, _, avg in _METER.findall(m[5]) if name not in _TIMING}
            if lr := _LR.search(m[5]):
                values["lr"] = float(lr[1])
            log.train[epoch] = values
        elif m := _EVALUATE.match(line):
            split, fields = m[1], None
        elif line == "=> result" and split:
            fields = {}
        elif fields is not None and (m := _FIELD.match(line)):
            fields[m[1]] = float(m[2].replace(",", ""))
            if (accuracy := _accuracy(fields)) is not None and "accuracy" in fields:
                log.evaluations.setdefault(epoch, {})[split] = accuracy
        else:
            fields = None  # the block ended
    return log


def read_epochs(log_path):
    """The EpochLog of a log file (an empty one when there is no log)."""
    if log_path is None:
        return EpochLog()
    return parse_epochs(log_path.read_text(errors="replace"))
