"""Ctrl-C and SIGTERM while training: stop at the next step, save it, say how to continue.

The first SIGINT or SIGTERM only asks training to stop. `GracefulStop` turns the request into
`trainer.should_stop` at the end of the running training step (or of the epoch, when it comes
during the epoch's validation), the path the time budget takes too: `LastCheckpoint` writes
last.ckpt at that step, summary.json records `stopped_reason: interrupted` (SIGINT) or
`sigterm`, and `train()` raises `vislab.errors.TrainingInterrupted`, which the CLI prints as
one line before exiting with 128 + the signal number (130, 143). `--resume` continues
mid-epoch from there. A second signal ends the process at once, by that signal, unsaved.
A signal while the run is set up (the time budget's probe, building the model) stops it
before training: `train()` looks before writing the run's files (then writes nothing) and
again just before fitting (then summary.json records the stop, as the watchdog's below does).

Why not Lightning's own handling: on KeyboardInterrupt it shuts down without a checkpoint,
exits with status 1 and ignores further Ctrl-C while it does; on SIGTERM it raises
`SIGTERMException`, a `SystemExit` whose status is 0, at the next batch or in the middle of
validation, also without a checkpoint. So the handlers are installed for the whole of
`train()`, and again in `on_train_start` over the SIGTERM handler the Trainer registers just
before (its teardown puts back what was there before it). A SIGTERM in the moment between
the two still ends in Lightning's `SIGTERMException`, which `train()` reports the same way.
Under DDP every rank learns of a signal any rank got, in the same step, through a
collective; a second signal kills the ranks Lightning launched, as Lightning does on an
interrupt.

Forked DataLoader workers inherit the handlers and ignore the signals (a Ctrl-C in a terminal
reaches the whole process group): the main process shuts them down when training stops.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any, Callable

import lightning as L
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import Callback

SIGNALS = (signal.SIGINT, signal.SIGTERM)
REASONS = {signal.SIGINT: "interrupted", signal.SIGTERM: "sigterm"}


def _say(text: str) -> None:
    """Print from a signal handler: os.write is safe there, print() may re-enter stdout."""
    try:
        os.write(2, (text + "\n").encode())
    except OSError:
        pass


BLOCKED_GRACE_S = 10.0  # how long the main thread may take to run its handler (one long op) before it counts as blocked


class BlockedWatchdog:
    """Stops the process on SIGINT/SIGTERM when the main thread is blocked in C code.

    Python runs a signal handler only when the main thread returns to the interpreter; blocked
    in a DDP rendezvous (`init_process_group` waiting for nodes or ranks that never come) it
    never does, and since GracefulStop replaces the default action, SIGTERM and Ctrl-C did
    nothing. The C-level handler still writes the signal number to `signal.set_wakeup_fd`,
    which this thread reads; if the handler has not run `BLOCKED_GRACE_S` later, it says so
    and exits with 128 + the signal number, as the default action would, after `on_exit`
    (which kills the launched ranks and records the stop in summary.json)."""

    def __init__(self, handled: Callable[[], int], on_exit: Callable[[int], None]) -> None:
        import socket

        self._handled = handled
        self._on_exit = on_exit
        self._read, self._write = socket.socketpair()
        self._write.setblocking(False)
        self._previous = signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        _WATCHED_FDS.add(self._write.fileno())
        self._seen = 0
        threading.Thread(target=self._watch, name="vislab-signal-watchdog", daemon=True).start()

    def _watch(self) -> None:
        import time

        while True:
            try:
                data = self._read.recv(64)
            except OSError:
                data = b""
            if not data:
                self._read.close()
                return
            for signum in data:
                if signum not in SIGNALS:
                    continue
                self._seen += 1
                deadline = time.monotonic() + BLOCKED_GRACE_S
                while self._handled() < self._seen and time.monotonic() < deadline:
                    time.sleep(0.05)
                if self._handled() < self._seen:
                    name = signal.Signals(signum).name
                    _say(f"\n{name} received while blocked (waiting for other DDP processes or nodes?): stopping now, without saving")
                    self._on_exit(signum)
                    os._exit(128 + signum)

    def close(self) -> None:
        """Put the previous wakeup fd back; the thread ends when its socket closes."""
        try:
            signal.set_wakeup_fd(self._previous)
        except ValueError:
            pass
        _WATCHED_FDS.discard(self._write.fileno())
        self._write.close()  # the reader sees the end of the stream and closes its side


_WATCHED_FDS: set[int] = set()


def _clear_wakeup_fd_in_child() -> None:
    """A forked DataLoader worker must not write its signals into the parent's watchdog socket
    (the parent would count them as signals its handler never ran for)."""
    try:
        fd = signal.set_wakeup_fd(-1)
        if fd not in _WATCHED_FDS:
            signal.set_wakeup_fd(fd)  # not ours: leave it as it was
    except ValueError:
        pass


os.register_at_fork(after_in_child=_clear_wakeup_fd_in_child)


class GracefulStop(Callback):
    """Receives SIGINT/SIGTERM during `train()` and stops training at the next step boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None  # the first signal received (by this rank)
        self.stopped_by: int | None = None  # the signal that stopped training (any rank's)
        self._owner = os.getpid()
        self._previous: dict[int, Any] = {}
        self._trainer: L.Trainer | None = None
        self._handled = 0  # SIGINT/SIGTERM the handler has run for (the watchdog compares)
        self._training = False  # before on_train_start the run is being set up: no step to save
        self._watchdog: BlockedWatchdog | None = None
        # records a stop outside training (`train` sets it once the run's files are written):
        # called with the signal by the watchdog's thread just before the process exits, or by
        # `train` for a signal in setup; returns the line that says where the stop leaves the run
        self.record_unsaved_stop: Callable[[int], str] | None = None

    # ---- the handlers ---------------------------------------------------------------------
    def install(self) -> None:
        """Take over SIGINT and SIGTERM (main thread only: signals are delivered there)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in SIGNALS:
            previous = signal.signal(sig, self._handle)
            self._previous.setdefault(sig, previous)
        if self._watchdog is None and os.getpid() == self._owner:
            self._watchdog = BlockedWatchdog(lambda: self._handled, self._blocked_exit)

    def restore(self) -> None:
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def _blocked_exit(self, signum: int) -> None:
        """The watchdog ends the process: the launched ranks go too, and the run records the stop."""
        self._kill_launched()
        if self.record_unsaved_stop is not None:
            try:
                _say(self.record_unsaved_stop(signum))
            except Exception as err:  # the process must still end: say what could not be recorded
                _say(f"could not record the stop ({err})")

    def _kill_launched(self) -> None:
        """Kill the ranks Lightning launched: they cannot finish alone."""
        launcher = getattr(getattr(self._trainer, "strategy", None), "launcher", None)
        if launcher is not None and hasattr(launcher, "kill"):
            launcher.kill(signal.SIGKILL)

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._owner:
            return  # a forked DataLoader worker: the main process stops it
        self._handled += 1
        name = signal.Signals(signum).name
        if self.signum is not None:
            _say(f"\n{name} again: stopping now, without saving (last.ckpt keeps the last saved step)")
            self._kill_launched()
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        outer = getattr(self._previous.get(signum), "__self__", None)
        if isinstance(outer, SignalLatch):  # a sweep around this run stops after it, even if it completes
            outer.signum = outer.signum or signum
        if getattr(rank_zero_only, "rank", 0) == 0:  # a terminal's Ctrl-C reaches every DDP rank
            key = "Ctrl-C" if signum == signal.SIGINT else name
            if self._training:
                _say(f"\n{name} received: saving and stopping after the current step ({key} again stops at once, without saving)")
            else:
                _say(f"\n{name} received: stopping before training starts ({key} again stops at once)")

    # ---- the callback ---------------------------------------------------------------------
    def setup(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        self._trainer = trainer

    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self._training = True
        self.install()  # over the SIGTERM handler the Trainer registered just before this hook
        self._check(trainer)

    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: Any, batch: Any, batch_idx: int) -> None:
        last = batch_idx + 1 >= trainer.num_training_batches
        if (batch_idx + 1) % trainer.accumulate_grad_batches and not last:
            return  # mid-accumulation: not a step a checkpoint can hold
        self._check(trainer)

    def on_train_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self._check(trainer)  # a signal during the epoch's validation stops after the epoch

    def _check(self, trainer: "L.Trainer") -> None:
        """Request the stop on every rank when any rank has a signal (a collective under DDP)."""
        wanted = self.signum is not None
        if trainer.world_size > 1:
            wanted = bool(trainer.strategy.reduce_boolean_decision(wanted, all=False))
        if wanted:
            self.stopped_by = self.signum if self.signum is not None else signal.SIGTERM
            trainer.should_stop = True

    @property
    def reason(self) -> str | None:
        """`stopped_reason` for summary.json when a signal stopped training, else None."""
        return REASONS.get(self.stopped_by) if self.stopped_by is not None else None


class SignalLatch:
    """SIGINT/SIGTERM around a loop of runs (a sweep): the first signal is only remembered, so
    it never lands as a KeyboardInterrupt inside a storage commit (Optuna's SQLite `tell` once
    left a trial RUNNING and raised 'Should not reach'); the loop checks `signum` between runs.
    A run's own `GracefulStop` passes its signal here too, so a Ctrl-C in a run's last step
    still ends the loop. A second signal ends the process at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "SignalLatch":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            _say(f"\n{name} again: stopping now")
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        _say(f"\n{name} received: stopping after the current step ({name} again stops at once)")
