"""Progress of a participant-level run: subjects done / to do and the time left."""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict

_SUBJECT = re.compile(r"(?:^|\.)sub_([A-Za-z0-9]+)_wf(?:\.|$)")


def _subject_of(name: str) -> str | None:
    match = _SUBJECT.search(name)
    return match.group(1) if match else None


class SubjectProgress:
    """A Nipype ``status_callback`` that logs each finished subject and an estimate of time left.

    Nipype calls it with ``(node, status)`` when a node starts, ends or fails (MultiProc and
    Linear plugins; graph-submission plugins such as SLURMGraph do not call it).
    """

    def __init__(self, workflow, logger: logging.Logger | None = None):
        self.logger = logger or logging.getLogger("bidsharmony")
        self.prefix = f"{workflow.name}."
        self.expected: dict[str, set[str]] = defaultdict(set)
        for name in workflow.list_node_names():
            subject = _subject_of(name)
            if subject is not None:
                self.expected[subject].add(name)
        self.finished: dict[str, set[str]] = defaultdict(set)
        self.done: list[str] = []
        self.started = time.monotonic()

    def __call__(self, node, status: str) -> None:
        name = (getattr(node, "fullname", None) or node.name).removeprefix(self.prefix)
        subject = _subject_of(name)
        if subject is None:
            return
        if status == "exception":
            self.logger.warning("sub-%s: node %s failed", subject, node.fullname)
            return
        if status != "end":
            return
        if name in self.expected[subject]:  # MapNode sub-jobs report too; count real nodes only
            self.finished[subject].add(name)
        if self.finished[subject] == self.expected[subject] and subject not in self.done:
            self.done.append(subject)
            self.logger.info("sub-%s done (%s)", subject, self.summary())

    def summary(self) -> str:
        """``"3/9 subjects, ~4 min left"``."""
        total, done = len(self.expected), len(self.done)
        text = f"{done}/{total} subjects"
        if 0 < done < total:
            left = (time.monotonic() - self.started) / done * (total - done)
            text += f", ~{left / 60:.0f} min left" if left >= 60 else f", ~{left:.0f} s left"
        return text
