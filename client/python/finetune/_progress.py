"""What Job.wait(progress=True) shows: a tqdm bar when tqdm is importable,
else plain lines (as `ftctl watch` prints when stdout is not a terminal)."""
import time

from finetune.v1 import finetune_pb2 as pb

_PLAIN_EVERY_SECONDS = 5.0  # progress events come every few seconds; fewer lines in plain mode


def describe(event):
    """One line for an event other than progress, in ftctl's words; None for progress."""
    kind = event.WhichOneof("payload")
    if kind == "epoch":
        s = event.epoch
        return (f"epoch {s.epoch}: train_loss {s.train_loss:.4f} train_acc {s.train_accuracy:.4f} | "
                f"val_loss {s.val_loss:.4f} val_acc {s.val_accuracy:.4f} top5 {s.val_top5_accuracy:.4f} | "
                f"lr {s.learning_rate:.2g} | {s.images_per_second:.0f} img/s, {s.epoch_seconds:.1f}s"
                f"{' [cached features]' if s.features_cached else ''}{' *best' if s.best else ''}")
    if kind == "state_changed":
        return f"[{pb.JobState.Name(event.state_changed.state)}] {event.state_changed.message}"
    if kind == "log":
        return f"{event.log.level}: {event.log.message}"
    return None


class Reporter:
    """Shows a job's events as they arrive; close() when the stream ends."""

    def __init__(self, enabled):
        self._enabled = enabled
        self._tqdm = None
        self._bar = None
        self._last_plain = (None, 0.0)  # (phase, epoch), time
        if enabled:
            try:
                from tqdm.auto import tqdm
                self._tqdm = tqdm
            except ImportError:
                pass

    def event(self, event):
        if not self._enabled:
            return
        if event.WhichOneof("payload") == "progress":
            self._progress(event.progress)
        else:
            self._write(describe(event))

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _write(self, line):
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, flush=True)

    def _progress(self, p):
        if self._tqdm is not None and p.phase == "train" and p.steps_per_epoch > 0:
            total = p.epochs * p.steps_per_epoch
            if self._bar is None or self._bar.total != total:
                self.close()
                self._bar = self._tqdm(total=total, unit="step", dynamic_ncols=True)
            self._bar.set_description(f"epoch {p.epoch}/{p.epochs}", refresh=False)
            self._bar.set_postfix(loss=f"{p.loss:.4f}", img_s=f"{p.images_per_second:.0f}", refresh=False)
            self._bar.update((p.epoch - 1) * p.steps_per_epoch + p.step - self._bar.n)
            return
        if self._bar is not None:
            self._bar.set_description(f"epoch {p.epoch}/{p.epochs} {p.phase}")
            return
        key, now = (p.phase, p.epoch), time.monotonic()
        if key == self._last_plain[0] and now - self._last_plain[1] < _PLAIN_EVERY_SECONDS and \
                p.step != p.steps_per_epoch:
            return
        self._last_plain = (key, now)
        if p.phase == "train":
            eta = int(p.eta_seconds)
            self._write(f"epoch {p.epoch}/{p.epochs} step {p.step}/{p.steps_per_epoch}  loss {p.loss:.4f}  "
                        f"{p.images_per_second:.0f} img/s  ETA {eta // 60}:{eta % 60:02d}")
        elif p.phase == "validate":
            self._write(f"epoch {p.epoch}/{p.epochs} validating...")
        else:
            self._write(f"{p.phase}...")
